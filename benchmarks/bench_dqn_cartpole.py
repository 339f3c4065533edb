"""The dqn_cartpole.py bar: default settings, seeds 1-5, run one after another so timings are clean.

    python benchmarks/bench_dqn_cartpole.py [--seeds 1 2 3 4 5] [--out benchmarks/out/dqn_cartpole]

For each seed: the final 100-episode greedy evaluation mean, and the environment step and wall time
of the first periodic evaluation scoring 475 or more (CartPole-v1's solved threshold). The bar:
every final mean >= 475; the median run first evaluates at >= 475 within 60k steps and 35 s.
Writes results.json and results.md in --out and exits 1 when the bar is missed.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOLVED = 475.0


def first_solved(eval_history):
    return next((p for p in eval_history if p["mean"] >= SOLVED), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/dqn_cartpole")
    parser.add_argument("extra", nargs="*", help="extra dqn_cartpole.py arguments (after --)")
    opts = parser.parse_args()
    opts.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in opts.seeds:
        run_name = f"bench_seed{seed}_{int(time.time())}"
        cmd = [sys.executable, str(ROOT / "dqn_cartpole.py"), "--seed", str(seed), "--run-name", run_name, *opts.extra]
        subprocess.run(cmd, cwd=opts.out, check=True, stdout=subprocess.DEVNULL)
        summary = json.loads((opts.out / "runs" / run_name / "summary.json").read_text())
        solved = first_solved(summary["eval_history"])
        rows.append(
            {
                "seed": seed,
                "final_mean": summary["final_eval"]["mean"],
                "final_min": summary["final_eval"]["min"],
                "wall_time_s": summary["wall_time_s"],
                "sps": summary["sps"],
                "first_475_step": solved and solved["step"],
                "first_475_wall_s": solved and solved["wall_time_s"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    # A run that never reaches 475 counts as infinitely slow when taking the median.
    steps = [r["first_475_step"] or float("inf") for r in rows]
    walls = [r["first_475_wall_s"] or float("inf") for r in rows]
    result = {
        "rows": rows,
        "median_first_475_step": statistics.median(steps),
        "median_first_475_wall_s": statistics.median(walls),
        "all_final_at_least_475": all(r["final_mean"] >= SOLVED for r in rows),
    }
    result["bar_met"] = (
        result["all_final_at_least_475"]
        and result["median_first_475_step"] <= 60_000
        and result["median_first_475_wall_s"] <= 35.0
    )
    (opts.out / "results.json").write_text(json.dumps(result, indent=2))
    lines = [
        "| seed | final 100-ep greedy mean (min) | first eval >= 475: step | wall s | steps/s | run wall s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        first = f"{r['first_475_step']:,} | {r['first_475_wall_s']:.1f}" if r["first_475_step"] else "never | -"
        lines.append(
            f"| {r['seed']} | {r['final_mean']:.1f} ({r['final_min']:.0f}) | {first} | "
            f"{r['sps']:,.0f} | {r['wall_time_s']:.1f} |"
        )
    lines.append(
        f"\nmedian first >= 475: step {result['median_first_475_step']:,}, "
        f"wall {result['median_first_475_wall_s']:.1f} s; bar met: {result['bar_met']}"
    )
    (opts.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.exit(0 if result["bar_met"] else 1)


if __name__ == "__main__":
    main()
