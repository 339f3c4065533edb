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


# ---- Checkpoints that are not checkpoints (the torch scripts' --eval-checkpoint) ----
class RunsCode:
    """Unpickled, it creates a directory: a checkpoint is data, and loading one must not run code from it."""

    def __reduce__(self):
        return os.mkdir, ("code_ran",)


def bad_torch_checkpoints(other_script: dict) -> dict:
    """{name: content from the real checkpoint's path}: files a torch script must refuse as bad input.

    Content is bytes, or an object for torch.save. `other_script` is another script's checkpoint dict.
    """
    import msgpack
    import numpy as np
    import torch

    def without_script_name(real):
        checkpoint = torch.load(real, weights_only=True)
        del checkpoint["script"]  # as written before checkpoints named their script
        return checkpoint

    return {
        "garbage": lambda real: np.random.default_rng(0).bytes(4096),
        "empty": lambda real: b"",
        "truncated": lambda real: real.read_bytes()[: real.stat().st_size // 2],
        "other_script": lambda real: other_script,
        "ppo_msgpack": lambda real: msgpack.packb({"script": "ppo_minatar_jax.py", "params": {}, "global_step": 600}),
        "no_script_name": without_script_name,
        "runs_code": lambda real: {"payload": RunsCode()},
    }


def assert_rejects_checkpoint(evaluate, content, tmp_path, monkeypatch, capsys) -> str:
    """`evaluate(path)` on a file holding `content`, in-process (a CLI run per file costs seconds): exit 2,
    one line naming --eval-checkpoint, no run directory, no code from the file ran. Returns the line."""
    import torch

    path = tmp_path / "bad.pt"
    path.write_bytes(content) if isinstance(content, bytes) else torch.save(content, path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:  # a file wrongly accepted is evaluated briefly, then fails here
        evaluate(str(path))
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--eval-checkpoint" in lines[0], lines
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    return lines[0]


def assert_layer_grad_norms(run_dir, layers, loss_tag="losses/td_loss"):
    """Each layer's gradient norm is logged at the loss-logging steps, and the layers' norms combine to
    the logged global norm (so they are norms of the same gradients, not of the weights)."""
    import math

    scalars = read_scalars(run_dir)
    layers = {f"grad_norms/{name}" for name in layers}
    assert layers <= scalars.keys(), scalars.keys()
    steps = [s for s, _ in scalars[loss_tag]]
    for tag in layers | {"losses/grad_norm"}:
        assert [s for s, _ in scalars[tag]] == steps, tag
    for i, (_, total) in enumerate(scalars["losses/grad_norm"]):
        layer_norms = [scalars[tag][i][1] for tag in layers]
        assert min(layer_norms) > 0
        assert math.sqrt(sum(n * n for n in layer_norms)) == pytest.approx(total, rel=1e-4)
