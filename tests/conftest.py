"""Helpers shared by every script's tests: run a script through its CLI, check the run contract.

The run contract (README, "Run contract") is the same for every script, so it is checked in one place.
"""

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):  # the benchmark modules import each other by name
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
import results  # noqa: E402  (benchmarks/results.py: the one TensorBoard reader)

SUMMARY_KEYS = {
    "script",
    "env_id",
    "seed",
    "total_timesteps",
    "wall_time_s",
    "sps",
    "device",
    "final_eval",
    "eval_history",
    "args",
    "versions",
}
FINAL_EVAL_KEYS = {"episodes", "mean", "std", "min", "max"}
EVAL_HISTORY_KEYS = {"step", "wall_time_s", "mean"}
REQUIRED_TAGS = {
    "charts/episodic_return",
    "charts/episodic_length",
    "charts/SPS",
    "eval/episodic_return",
}


# ---- The script under test: the one a test file is named after, or a copy of it (--script) ----
def pytest_addoption(parser):
    parser.addoption(
        "--script",
        metavar="PATH",
        help="run a script's tests on a modified copy of it: pytest tests/test_dqn_atari.py --script dueling_dqn_atari.py",
    )


SCRIPT_OPTION = None  # --script, set before any test file is imported
SCRIPT_PATHS = {}  # file name -> path of the scripts loaded by load_script, for run_script


def pytest_configure(config):
    global SCRIPT_OPTION
    SCRIPT_OPTION = config.getoption("--script")


def load_script(default: str, fits=lambda module: True):
    """(file name, module) of the script a test file checks: the --script copy where one is given and
    `fits` it (the PPO tests pick the MLP or CNN tests by the copy's Args), else `default` beside tests/."""
    path = Path(SCRIPT_OPTION).resolve() if SCRIPT_OPTION else None
    if path is None or path == ROOT / default:
        return default, importlib.import_module(Path(default).stem)
    if not path.is_file():
        pytest.exit(f"--script {SCRIPT_OPTION}: no such file; pass the path of a copy of a script", returncode=2)
    if path.stem not in sys.modules:  # registered before it runs: dataclasses look a module up by name
        spec = importlib.util.spec_from_file_location(path.stem, path)
        sys.modules[path.stem] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[path.stem])
    module = sys.modules[path.stem]
    if not fits(module):
        return default, importlib.import_module(Path(default).stem)
    SCRIPT_PATHS[path.name] = path
    return path.name, module


def script_command(script, *args) -> list:
    return [sys.executable, str(SCRIPT_PATHS.get(script, ROOT / script)), *map(str, args)]


def start_script(script, *args, cwd):
    """`python <script> <args>` started in the background from `cwd`; its stderr is a text pipe."""
    return subprocess.Popen(
        script_command(script, *args), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def run_script(script, *args, cwd, timeout=600, env=None):
    """Run `python <script> <args>` from `cwd` (so runs/ lands there); returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        script_command(script, *args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def read_scalars(run_dir):
    """All TensorBoard scalars of a run directory as {tag: [(step, value), ...]}, wall times left out."""
    return {tag: [(step, value) for step, _, value in points] for tag, points in results.read_scalars(run_dir).items()}


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


def assert_bad_input(script, *args, cwd, mentions, timeout=120, keep=False):
    """Bad input stops with exit code 2 and one line (no traceback) naming the problem and the fix.
    keep: runs/ already holds runs, which must stay as they were (nothing written, nothing removed)."""
    before = sorted((Path(cwd) / "runs").rglob("*")) if keep else []
    proc = run_script(script, *args, cwd=cwd, timeout=timeout)
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for word in [mentions] if isinstance(mentions, str) else mentions:
        assert word in lines[0], lines[0]
    if keep:
        assert sorted((Path(cwd) / "runs").rglob("*")) == before, "bad input must not touch runs/"
    else:
        assert not (Path(cwd) / "runs").exists() or not any((Path(cwd) / "runs").iterdir()), (
            "bad input must stop before a run directory is written"
        )
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


def weight_layers(network) -> list:
    """Names of a torch network's layers with weights (Linear, Conv2d), as the scripts' grad_norms key them."""
    import torch.nn as nn

    return [name for name, m in network.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


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


# ---- Endurance: kill -9 and resume, non-finite stops, memory checks (every script) ----
TIME_TAGS = {"charts/SPS"}  # wall-clock figures: the only scalars a resumed run may log differently


def kill_after_checkpoint(script, *args, cwd, run_name, rng, timeout=300):
    """Starts `script`, waits for its first checkpoint, then SIGKILLs it at a random moment of the next
    `window` seconds (mid-update, mid-evaluation, mid-checkpoint-write alike). Returns the kill delay."""
    import signal
    import time

    proc = start_script(script, *args, "--run-name", run_name, cwd=cwd)  # a --script copy outside ROOT too
    checkpoint, deadline = Path(cwd) / "runs" / run_name / "checkpoint", time.time() + timeout
    while not checkpoint.exists():
        assert proc.poll() is None, f"{script} stopped before its first checkpoint: {proc.stderr.read()[-3000:]}"
        assert time.time() < deadline, "no checkpoint written"
        time.sleep(0.05)
    delay = float(rng.uniform(0.0, 1.0))
    time.sleep(delay)
    assert proc.poll() is None, "the run finished before it could be killed: give it a longer budget"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return delay


def assert_kill_resume_equal(script, *args, cwd, seed=0, timeout=300):
    """A run killed with SIGKILL at a random moment after a checkpoint and resumed with --resume ends like
    the same run never killed: the same summary figures and the same TensorBoard curves, step for step."""
    import numpy as np

    full = run_script(script, *args, "--run-name", "full", cwd=cwd, timeout=timeout)
    assert full.returncode == 0, full.stderr[-3000:]
    delay = kill_after_checkpoint(
        script, *args, cwd=cwd, run_name="killed", rng=np.random.default_rng(seed), timeout=timeout
    )
    resumed = run_script(script, "--resume", Path("runs") / "killed", cwd=cwd, timeout=timeout)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (json.loads((Path(cwd) / "runs" / name / "summary.json").read_text()) for name in ("full", "killed"))
    assert a["final_eval"] == b["final_eval"], (delay, a["final_eval"], b["final_eval"])
    untimed = [{k: v for k, v in p.items() if k != "wall_time_s"} for p in a["eval_history"]]
    assert untimed == [{k: v for k, v in p.items() if k != "wall_time_s"} for p in b["eval_history"]], delay
    assert a["total_timesteps"] == b["total_timesteps"] and b["status"] == "finished"
    curves_a, curves_b = read_scalars(Path(cwd) / "runs/full"), read_scalars(Path(cwd) / "runs/killed")
    assert curves_a.keys() == curves_b.keys()
    for tag in curves_a.keys() - TIME_TAGS:
        assert curves_a[tag] == curves_b[tag], (tag, delay)
    return a, b


def assert_nonfinite_stops(run, run_dir, capsys, step):
    """`run()` plants a non-finite loss after the run's first checkpoint: it stops at once (by `step`, not at a
    later check of the parameters) with one error line naming the step and the kept checkpoint, exit code 3,
    summary.json marked failed. Returns the checkpoint."""
    with pytest.raises(SystemExit) as exit_:
        run()
    assert exit_.value.code == 3
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: non-finite") and f"by step {step:,};" in lines[0], lines
    checkpoint = Path(run_dir) / "checkpoint"
    assert str(checkpoint) in lines[0] and checkpoint.is_file(), lines[0]
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    assert summary["status"] == "failed" and "non-finite" in summary["failure"]
    return checkpoint


def fake_cgroup(tmp_path, version, limit, usage):
    """(meminfo, cgroup root) files of a machine with 20 GiB available and a container limit."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal: {24 << 20} kB\nMemFree: {1 << 20} kB\nMemAvailable: {20 << 20} kB\n")
    root = tmp_path / "cgroup"
    names = (
        ("memory.max", "memory.current")
        if version == 2
        else ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")
    )
    for name, value in zip(names, (limit, usage)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"{value}\n")
    return str(meminfo), str(root)


def assert_available_memory(available_memory, tmp_path):
    """MemAvailable (not MemFree), capped by a cgroup v1 or v2 limit minus what the cgroup uses."""
    gib = 1 << 30
    meminfo, root = fake_cgroup(tmp_path / "none", 2, "max", 0)
    assert available_memory(meminfo, root) == 20 * gib
    meminfo, root = fake_cgroup(tmp_path / "v2", 2, 8 * gib, 3 * gib)
    assert available_memory(meminfo, root) == 5 * gib
    meminfo, root = fake_cgroup(tmp_path / "v1", 1, 6 * gib, 2 * gib)
    assert available_memory(meminfo, root) == 4 * gib
    meminfo, root = fake_cgroup(tmp_path / "v1unlimited", 1, 9223372036854771712, 2 * gib)
    assert available_memory(meminfo, root) == 20 * gib
