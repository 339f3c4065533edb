"""Benchmarks of a2c_atari.py on this machine: training steps/s, and a learning check on Breakout.

    flock /tmp/team/cpu.lock python benchmarks/bench_a2c_atari.py sps           # ~2 min: steps/s, defaults
    flock /tmp/team/cpu.lock python benchmarks/bench_a2c_atari.py learn         # ~45 min on 2 cores: 1M steps
    flock /tmp/team/cpu.lock python benchmarks/bench_a2c_atari.py learn --total-timesteps 250000   # ~12 min

`sps` trains with the script's defaults (16 envs x 5 steps) for `--sps-steps` steps, once per
`--threads` value, and reads the steady-state steps/s that the run logs (charts/SPS, last value,
before the final evaluation). `learn` trains on Breakout for `--total-timesteps` with the defaults
(the learning rate anneals to 0 over that budget) and compares the final evaluation (30 whole games,
raw scores, sampled actions) with a uniformly random policy evaluated the same way (same seeds,
same protocol). It also bins the run's training games by step and prints them beside a reference A2C
run's games in the same bins (benchmarks/curve.py against `[curves.sb3_zoo_a2c_breakout]` in
reference_scores.toml: Stable-Baselines3 Zoo's Breakout run), so that a short check can say whether
the run is on the reference's course; `python benchmarks/curve.py runs/<run>` prints the same table.
Results go to runs/bench_a2c_atari_<mode>.json and stdout. Run under the CPU lock.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from curve import reference_comparison  # noqa: E402  (benchmarks/curve.py, beside this file)
from results import read_scalars  # noqa: E402

import a2c_atari as A  # noqa: E402


class UniformPolicy(nn.Module):
    """The random baseline: equal logits for every action."""

    def __init__(self, n_actions: int):
        super().__init__()
        self.n_actions = n_actions

    def forward(self, obs):
        return torch.zeros(len(obs), self.n_actions), torch.zeros(len(obs))


def run(args_list, run_name):
    cmd = [sys.executable, str(ROOT / "a2c_atari.py"), "--run-name", run_name, "--no-cuda", *map(str, args_list)]
    print("$", " ".join(cmd), flush=True)
    start = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - start


def load(run_name):
    """(summary, {tag: [(step, value), ...]}) of a finished run, scalars read by the harness's reader."""
    run_dir = Path("runs") / run_name
    scalars = {t: [(step, value) for step, _, value in points] for t, points in read_scalars(run_dir).items()}
    return json.loads((run_dir / "summary.json").read_text()), scalars


def uptime():
    return os.getloadavg()


def bench_sps(opts):
    results = []
    for threads in opts.threads:
        name = f"bench_a2c_sps_t{threads}_{int(time.time())}"
        load_before = uptime()
        wall = run(
            [
                "--env-id",
                opts.env_id,
                "--total-timesteps",
                opts.sps_steps,
                "--torch-threads",
                threads,
                "--eval-frequency",
                10**9,
                "--eval-episodes",
                1,
                "--final-eval-episodes",
                1,
                "--eval-max-frames",
                2000,
            ],
            name,
        )
        summary, scalars = load(name)
        results.append(
            {
                "torch_threads": threads,
                "steps": summary["total_timesteps"],
                "sps_steady": scalars["charts/SPS"][-1][1],
                "sps_summary": summary["sps"],
                "wall_s": wall,
                "loadavg_before": load_before,
                "loadavg_after": uptime(),
            }
        )
        print(json.dumps(results[-1]), flush=True)
    return {"mode": "sps", "env_id": opts.env_id, "results": results}


def bench_learn(opts):
    name = f"bench_a2c_learn_{opts.total_timesteps}_{int(time.time())}"
    load_before = uptime()
    wall = run(
        [
            "--env-id",
            opts.env_id,
            "--seed",
            opts.seed,
            "--total-timesteps",
            opts.total_timesteps,
            "--eval-frequency",
            max(opts.total_timesteps // 4, 80),
            "--final-eval-episodes",
            opts.episodes,
            "--save-model",
        ],
        name,
    )
    summary, scalars = load(name)
    game = A.game_name(opts.env_id)
    # Same protocol, seeds and sticky actions as the script's final evaluation (eval seed = seed + 100,000).
    sticky = A.sticky_prob(A.Args(env_id=opts.env_id))
    random_episodes = A.evaluate(
        UniformPolicy(A.action_count(game)),
        game,
        opts.episodes,
        opts.seed + 100_000,
        torch.device("cpu"),
        18_000,
        sticky_action_prob=sticky,
    )
    train_games = scalars.get("charts/episodic_return", [])
    train_returns = [v for _, v in train_games]
    return {
        "mode": "learn",
        "env_id": opts.env_id,
        "seed": opts.seed,
        "total_timesteps": summary["total_timesteps"],
        "wall_s": wall,
        "sps": summary["sps"],
        "final_eval": summary["final_eval"],
        "eval_history": summary["eval_history"],
        "random_policy": A.eval_stats(*random_episodes),
        "last_100_training_games_mean": float(np.mean(train_returns[-100:])) if train_returns else None,
        "training_games_vs_reference": reference_comparison(train_games, "a2c_atari.py", opts.env_id),
        "loadavg_before": load_before,
        "loadavg_after": uptime(),
        "run_dir": f"runs/{name}",
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["sps", "learn"])
    p.add_argument("--env-id", default="BreakoutNoFrameskip-v4")
    p.add_argument("--sps-steps", type=int, default=40_000, help="training steps per steps/s measurement")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="--torch-threads values to measure")
    # 1M steps at the 376 steps/s measured on the 2-core box (loaded) is ~45 min.
    p.add_argument("--total-timesteps", type=int, default=1_000_000, help="learning-check budget (~45 min here)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--episodes", type=int, default=30, help="evaluation games (trained and random policy)")
    opts = p.parse_args()
    result = bench_sps(opts) if opts.mode == "sps" else bench_learn(opts)
    result["versions"] = A.versions(torch, A.gym, np, A.ale_py)
    result["cpus"] = os.cpu_count()
    result["gpu"] = torch.cuda.is_available()
    out = Path("runs") / f"bench_a2c_atari_{opts.mode}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
