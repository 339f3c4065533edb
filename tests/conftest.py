"""Helpers shared by every script's tests: run a script through its CLI, check the run contract.

The run contract (README, "Run contract") is the same for every script, so it is checked in one place.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SUMMARY_KEYS = {
    "script", "env_id", "seed", "total_timesteps", "wall_time_s", "sps", "device",
    "final_eval", "eval_history", "args", "versions",
}
FINAL_EVAL_KEYS = {"episodes", "mean", "std", "min", "max"}
EVAL_HISTORY_KEYS = {"step", "wall_time_s", "mean"}
REQUIRED_TAGS = {
    "charts/episodic_return", "charts/episodic_length", "charts/SPS", "eval/episodic_return",
}


def run_script(script, *args, cwd, timeout=600, env=None):
    """Run `python <script> <args>` from `cwd` (so runs/ lands there); returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env,
    )


def read_scalars(run_dir):
    """All TensorBoard scalars of a run directory as {tag: [(step, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def check_run_contract(run_dir, script, env_id, seed, total_timesteps):
    """Asserts everything the run contract promises about `runs/<run-name>/`; returns the summary."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys(), SUMMARY_KEYS - summary.keys()
    assert summary["script"] == script
    assert summary["env_id"] == env_id
    assert summary["seed"] == seed
    assert summary["total_timesteps"] == total_timesteps
    assert summary["wall_time_s"] > 0 and summary["sps"] > 0
    assert FINAL_EVAL_KEYS <= summary["final_eval"].keys()
    fe = summary["final_eval"]
    assert fe["episodes"] > 0 and fe["min"] <= fe["mean"] <= fe["max"] and fe["std"] >= 0
    assert summary["eval_history"], "no periodic evaluation was recorded"
    for point in summary["eval_history"]:
        assert EVAL_HISTORY_KEYS <= point.keys()
    assert summary["args"]["seed"] == seed and summary["args"]["env_id"] == env_id
    assert summary["versions"].get("python")
    tags = read_scalars(run_dir).keys()
    assert REQUIRED_TAGS <= tags, REQUIRED_TAGS - tags
    assert any(t.startswith("losses/") for t in tags), tags
    return summary


def assert_bad_input(script, *args, cwd, mentions, timeout=120):
    """Bad input stops with exit code 2 and one line (no traceback) naming the problem and the fix."""
    proc = run_script(script, *args, cwd=cwd, timeout=timeout)
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for word in ([mentions] if isinstance(mentions, str) else mentions):
        assert word in lines[0], lines[0]
    assert not (Path(cwd) / "runs").exists() or not any((Path(cwd) / "runs").iterdir()), \
        "bad input must stop before a run directory is written"
    return lines[0]


@pytest.fixture
def workdir(tmp_path):
    """An empty working directory for a script run (its runs/ and videos/ go here)."""
    return tmp_path
