"""Wall time, steps/s and score of ppo_minatar_jax.py / ppo_minatar_cnn_jax.py, checked against the issue's bar.

    python benchmarks/bench_ppo_minatar.py                       # MLP, Breakout-MinAtar, 1e7 steps, 1 seed (CPU)
    python benchmarks/bench_ppo_minatar.py --scripts ppo_minatar_jax.py ppo_minatar_cnn_jax.py --num-seeds 1 8
    python benchmarks/bench_ppo_minatar.py --total-timesteps 2000000 --scripts ppo_minatar_cnn_jax.py

Each configuration is one CLI run of the script, timed from process start to exit (so JAX compilation
and the final 2 x 1024 evaluation episodes are included), in a fresh working directory under --out.
Writes <out>/results.json and <out>/results.md. Targets (issue 5): MLP 1e7 steps on the 2-core CPU box
<= 243 s; on an H100, MLP < 15 s, CNN < 60 s, and --num-seeds 8 < 2x one seed; score: Breakout mean of
1024 sampled-action episodes over 3 seeds, MLP >= 40, CNN >= 60. On a shared machine, run it alone
(e.g. under `flock`): the load average at start and end is recorded with every row.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_WALL_TARGET_S = 243.0  # the popular jitted PPO's 1e7 Breakout steps on the 2-core box, incl. compile
GPU_WALL_TARGET_S = {"ppo_minatar_jax.py": 15.0, "ppo_minatar_cnn_jax.py": 60.0}
SCORE_TARGET = {"ppo_minatar_jax.py": 40.0, "ppo_minatar_cnn_jax.py": 60.0}


def run_one(script: str, env_id: str, total: int, num_seeds: int, cuda: bool, out: Path, extra: list) -> dict:
    name = f"{Path(script).stem}__{env_id}__{total}__k{num_seeds}"
    cwd = out / name
    cwd.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        str(ROOT / script),
        "--env-id",
        env_id,
        "--total-timesteps",
        str(total),
        "--num-seeds",
        str(num_seeds),
        "--run-name",
        "bench",
        "--cuda" if cuda else "--no-cuda",
        *extra,
    ]
    load_start = os.getloadavg()[0]
    start = time.time()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.time() - start
    (cwd / "stdout.txt").write_text(proc.stdout)
    (cwd / "stderr.txt").write_text(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    dirs = [cwd / "runs" / "bench"] if num_seeds == 1 else sorted((cwd / "runs").glob("bench__*"))
    summaries = [json.loads((d / "summary.json").read_text()) for d in dirs]
    means = [s["final_eval"]["mean"] for s in summaries]
    return {
        "script": script,
        "env_id": env_id,
        "total_timesteps": total,
        "num_seeds": num_seeds,
        "device": summaries[0]["device"],
        "wall_s": round(wall, 1),
        "steps_per_s_incl_compile": round(total * num_seeds / wall),
        "train_sps_per_seed": round(summaries[0]["sps"]),
        "sampled_eval_means": [round(m, 2) for m in means],
        "sampled_eval_mean_over_seeds": round(sum(means) / len(means), 2),
        "greedy_eval_means": [round(s["final_eval_greedy"]["mean"], 2) for s in summaries],
        "load_avg_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "command": " ".join(cmd[1:]),
    }


def verdicts(rows: list) -> list:
    lines = []
    for r in rows:
        on_gpu = r["device"] not in ("cpu",)
        if r["total_timesteps"] == 10_000_000 and r["num_seeds"] == 1:
            target = (
                GPU_WALL_TARGET_S[r["script"]]
                if on_gpu
                else (CPU_WALL_TARGET_S if r["script"] == "ppo_minatar_jax.py" else None)
            )
            if target is not None:
                ok = "PASS" if r["wall_s"] <= target else "FAIL"
                lines.append(f"{ok}: {r['script']} 1e7 steps on {r['device']} in {r['wall_s']} s (target {target} s)")
        if r["env_id"] == "Breakout-MinAtar" and r["total_timesteps"] == 10_000_000 and r["num_seeds"] >= 3:
            ok = "PASS" if r["sampled_eval_mean_over_seeds"] >= SCORE_TARGET[r["script"]] else "FAIL"
            lines.append(
                f"{ok}: {r['script']} sampled eval mean over {r['num_seeds']} seeds "
                f"{r['sampled_eval_mean_over_seeds']} (target {SCORE_TARGET[r['script']]})"
            )
    by_key = {(r["script"], r["env_id"], r["total_timesteps"], r["num_seeds"]): r for r in rows}
    for (script, env_id, total, k), r in by_key.items():
        one = by_key.get((script, env_id, total, 1))
        if k == 8 and one is not None:
            ok = "PASS" if r["wall_s"] < 2 * one["wall_s"] else "FAIL"
            lines.append(
                f"{ok}: {script} --num-seeds 8 takes {r['wall_s']} s, one seed {one['wall_s']} s "
                f"(target < 2x) on {r['device']}"
            )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scripts", nargs="+", default=["ppo_minatar_jax.py"])
    p.add_argument("--env-ids", nargs="+", default=["Breakout-MinAtar"])
    p.add_argument("--total-timesteps", type=int, default=10_000_000)
    p.add_argument("--num-seeds", type=int, nargs="+", default=[1])
    p.add_argument(
        "--cuda",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="let JAX use a GPU when there is one (--no-cuda: CPU)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "ppo_minatar")
    p.add_argument(
        "--extra", nargs=argparse.REMAINDER, default=[], help="further flags passed to every script run (put last)"
    )
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for script in a.scripts:
        for env_id in a.env_ids:
            for k in a.num_seeds:
                row = run_one(script, env_id, a.total_timesteps, k, a.cuda, a.out, a.extra)
                print(json.dumps(row), flush=True)
                rows.append(row)
    checks = verdicts(rows)
    (a.out / "results.json").write_text(json.dumps({"rows": rows, "checks": checks}, indent=2))
    table = [
        "| script | env | steps | seeds | device | wall s (incl. compile) | train SPS/seed | sampled eval (per seed) | greedy eval |",
        "|-|-|-|-|-|-|-|-|-|",
    ]
    table += [
        f"| {r['script']} | {r['env_id']} | {r['total_timesteps']:,} | {r['num_seeds']} | {r['device']} | "
        f"{r['wall_s']} | {r['train_sps_per_seed']:,} | {r['sampled_eval_means']} | {r['greedy_eval_means']} |"
        for r in rows
    ]
    (a.out / "results.md").write_text("\n".join(table + [""] + checks) + "\n")
    print("\n".join(table + [""] + checks))


if __name__ == "__main__":
    main()
