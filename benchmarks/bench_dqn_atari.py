"""Benchmark of dqn_atari.py: training steps/s (default settings, and --num-envs 8) and the replay buffer's
real memory footprint, and where the training loop's time goes. Writes benchmarks/out/dqn_atari_<config>.json and .md.

    flock /tmp/team/cpu.lock python benchmarks/bench_dqn_atari.py --config default
    flock /tmp/team/cpu.lock python benchmarks/bench_dqn_atari.py --config envs8
    flock /tmp/team/cpu.lock python benchmarks/bench_dqn_atari.py --config memory
    flock /tmp/team/cpu.lock python benchmarks/bench_dqn_atari.py --config profile --train-steps 3000

Speed: a run with the default settings, except that learning starts after --learning-starts steps
(default 80,000 is too long for a benchmark) and the evaluations are cut to one short episode; the
reported `sps_training` is measured between the first and last loss events, so only steps that
include gradient updates count (one update per 4 env steps, as in a default run after 80k steps).
Memory: a 50k buffer filled past wraparound with random acting (no network forward, so it fills
quickly) and a few updates; the process RSS growth from just before the buffer is allocated to the
end of training is compared with 50,000 x 7,056 bytes (one 84x84 frame per transition).
Profile: the speed run under cProfile; the seconds inside each part of the loop (PARTS) and their share of
train(), whose time includes the random-acting steps before learning starts and the short evaluations.
"""

import argparse
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import time
from pathlib import Path

from results import read_scalars  # benchmarks/results.py, beside this file

ROOT = Path(__file__).resolve().parents[1]
# (caller in dqn_atari.py, file, function) -> part of the training loop. By caller, so that the evaluations'
# env steps and forward passes are not counted as training ones.
PARTS = {
    ("train", "vector_env.py", "step"): "env step (AtariVectorEnv, C++ threads)",
    ("train", "dqn_atari.py", "select_actions"): "action selection (epsilon-greedy, 1 forward)",
    ("train", "dqn_atari.py", "add"): "replay add",
    ("train", "dqn_atari.py", "sample"): "replay sample (4-stacks rebuilt)",
    ("train", "dqn_atari.py", "dqn_update"): "update",
    ("dqn_update", "dqn_atari.py", "dqn_loss"): "update: forward passes and loss",
    ("dqn_update", "_tensor.py", "backward"): "update: backward",
    ("dqn_update", "optimizer.py", "wrapper"): "update: Adam step (fused)",
    ("train", "dqn_atari.py", "sync_target"): "target sync",
    ("train", "dqn_atari.py", "scalars"): "logging: scalars (every 100 steps)",
    ("train", "dqn_atari.py", "grad_norms"): "logging: per-layer grad norms",
    ("train", "dqn_atari.py", "progress"): "logging: progress line",
    ("train", "dqn_atari.py", "evaluation"): "logging: evaluation results",
}
EVALUATIONS = [("train", "dqn_atari.py", "evaluate"), ("train", "dqn_atari.py", "final_evaluation")]
SHORT_EVAL = ["--eval-episodes", "1", "--final-eval-episodes", "1", "--eval-max-frames", "2000"]


def configs(args):
    speed = [
        "--total-timesteps",
        str(args.learning_starts + args.train_steps),
        "--learning-starts",
        str(args.learning_starts),
        *SHORT_EVAL,
    ]
    return {
        "default": speed,
        "envs8": [*speed, "--num-envs", "8"],
        "memory": [
            "--buffer-size",
            "50000",
            "--total-timesteps",
            "56000",
            "--learning-starts",
            "55800",
            "--start-e",
            "1",
            "--end-e",
            "1",
            *SHORT_EVAL,
        ],
        "profile": speed,
    }


def profile_parts(path) -> dict:
    """Seconds inside each of PARTS (cumulative: with what it calls) and their share of train() less evaluations."""
    stats, seconds, calls = pstats.Stats(str(path)).stats, {}, {}
    for (file, _, func), (*_, callers) in stats.items():
        for (caller_file, _, caller), (_, n, _, cumtime) in callers.items():
            key = (caller, Path(file).name, func)
            if Path(caller_file).name == "dqn_atari.py" and (key in PARTS or key in EVALUATIONS):
                seconds[key], calls[key] = seconds.get(key, 0.0) + cumtime, calls.get(key, 0) + n
    train = next(v[3] for (file, _, func), v in stats.items() if (Path(file).name, func) == ("dqn_atari.py", "train"))
    loop = train - sum(seconds.get(key, 0.0) for key in EVALUATIONS)
    parts = {"training loop (train() less evaluations)": {"s": round(loop, 2), "calls": 1, "share": 1.0}}
    for key, part in PARTS.items():
        if key in seconds:
            parts[part] = {"s": round(seconds[key], 2), "calls": calls[key], "share": round(seconds[key] / loop, 3)}
    return parts


def run(name, cli, out_dir):
    prof = out_dir / "dqn_atari_profile.prof"
    profiler = ["-m", "cProfile", "-o", str(prof)] if name == "profile" else []
    cmd = [sys.executable, *profiler, str(ROOT / "dqn_atari.py"), *cli, "--run-name", f"bench_{name}", "--seed", "1"]
    shutil.rmtree(out_dir / "runs" / f"bench_{name}", ignore_errors=True)  # old events would mix into the timing
    load = os.getloadavg()
    start = time.time()
    proc = subprocess.run(cmd, cwd=out_dir, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    run_dir = out_dir / "runs" / f"bench_{name}"
    summary = json.loads((run_dir / "summary.json").read_text())
    losses = read_scalars(run_dir).get("losses/td_loss", [])  # [(step, wall_time, value), ...]
    result = {
        "config": name,
        "command": "python dqn_atari.py " + " ".join(cli),
        "device": summary["device"],
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg_before": load,
        "wall_s": time.time() - start,
        "total_timesteps": summary["total_timesteps"],
        "sps_overall": summary["sps"],
        "updates": summary["updates"],
        "memory": summary["memory"],
    }
    if len(losses) >= 2:
        (first_step, first_time, _), (last_step, last_time, _) = losses[0], losses[-1]
        result["sps_training"] = (last_step - first_step) / (last_time - first_time)
        result["sps_training_window"] = [first_step, last_step]
    if name == "profile":
        result["parts"] = profile_parts(prof)
    if name == "memory":
        m = summary["memory"]
        expected = 50_000 * 84 * 84
        result["rss_growth_bytes"] = m["rss_end_bytes"] - m["rss_start_bytes"]
        result["rss_growth_vs_50k_frames"] = result["rss_growth_bytes"] / expected
        result["within_30_percent"] = abs(result["rss_growth_vs_50k_frames"] - 1) <= 0.30
        result["buffer_bytes_per_transition"] = m["buffer_bytes"] / m["buffer_capacity"]
        result["buffer_bytes_1M"] = result["buffer_bytes_per_transition"] * 1_000_000
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=["default", "envs8", "memory", "profile"], required=True)
    p.add_argument("--learning-starts", type=int, default=1_000)
    p.add_argument("--train-steps", type=int, default=800, help="env steps after learning starts")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args.config, configs(args)[args.config], args.out.resolve())
    (args.out / f"dqn_atari_{args.config}.json").write_text(json.dumps(result, indent=2))
    rows = "\n".join(f"| {k} | {v} |" for k, v in result.items() if k != "parts")
    parts = "".join(
        f"| {k} | {v['s']} | {v['calls']} | {v['share']:.1%} |\n" for k, v in result.get("parts", {}).items()
    )
    parts = parts and f"\n| part | seconds | calls | share of the loop |\n|-|-|-|-|\n{parts}"
    (args.out / f"dqn_atari_{args.config}.md").write_text(f"| field | value |\n|-|-|\n{rows}\n{parts}")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
