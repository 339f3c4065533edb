"""The five scripts, side by side: the deliberate duplication stays deliberate, and each reads algorithm first."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["dqn_cartpole.py", "dqn_atari.py", "a2c_atari.py", "ppo_minatar_jax.py", "ppo_minatar_cnn_jax.py"]
TORCH_SCRIPTS = SCRIPTS[:3]
# The appendix pieces every script carries, byte for byte: a fix to one is a fix to all five.
SHARED = ["fail", "versions", "eval_stats", "available_memory", "check_fits", "resume_path", "new_run_dir", "RunLog"]
TORCH_SHARED = ["all_finite", "rng_states", "set_rng_states", "load_checkpoint", "load_weights"]
APPENDIX = "# ==== Appendix: run bookkeeping (logs, summary, checkpoints, checks; nothing here affects learning) ===="
SECTIONS = ["Arguments", "Environment", "Network", None, "Loss", "Update", "Evaluation", "Training"]


def definitions(script: str) -> dict:
    """{name: source} of the script's module-level functions and classes."""
    text = (ROOT / script).read_text()
    tree = ast.parse(text)
    return {
        node.name: ast.get_source_segment(text, node)
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
    }


def headings(script: str) -> list:
    return re.findall(r"^# ==== (.*) ====$", (ROOT / script).read_text(), flags=re.M)


@pytest.mark.parametrize("names, scripts", [(SHARED, SCRIPTS), (TORCH_SHARED, TORCH_SCRIPTS)])
def test_appendix_helpers_are_identical_in_every_script(names, scripts):
    sources = {script: definitions(script) for script in scripts}
    for name in names:
        first = sources[scripts[0]][name]
        for script in scripts[1:]:
            assert sources[script].get(name) == first, f"{name} of {script} differs from {scripts[0]}'s"


@pytest.mark.parametrize("script", SCRIPTS)
def test_sections_read_algorithm_first_then_the_appendix(script):
    found = headings(script)
    assert len(found) == len(SECTIONS) + 1 and "# ==== " + found[-1] + " ====" == APPENDIX, found
    for expected, heading in zip(SECTIONS, found):
        if expected is None:  # the experience store: a replay buffer or a rollout
            assert heading in ("Replay buffer", "Rollout"), found
        else:
            assert heading == expected, found
    lines = (ROOT / script).read_text().splitlines()
    appendix = lines.index(APPENDIX)
    names = definitions(script)
    after = {
        name
        for name in names
        if (ROOT / script).read_text().index(names[name]) > (ROOT / script).read_text().index(APPENDIX)
    }
    assert set(SHARED) <= after, set(SHARED) - after
    assert {"train", "main"}.isdisjoint(after)
    # The training loop, the part a reader comes for, starts in the first 60% of the file.
    loop = next(
        i
        for i, line in enumerate(lines)
        if re.match(r"\s+(while global_step|for \w+ in range\(.*updates)", line)
        or "train_chunk(" in line
        and "=" in line
        and line.startswith("        ")
    )
    assert loop < 0.6 * len(lines), (loop, len(lines))
    assert appendix > loop


@pytest.mark.parametrize("script", SCRIPTS)
def test_train_is_about_a_hundred_lines(script):
    """train() is the training mode only: at most 100 statements (the formatter folds one over several lines)."""
    tree = ast.parse((ROOT / script).read_text())
    train = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "train")
    assert len({node.lineno for node in ast.walk(train) if isinstance(node, ast.stmt)}) <= 100


def test_kill_helper_starts_a_copy_that_lives_outside_the_repo(tmp_path, monkeypatch):
    """`--script` takes any path: the kill-and-resume helper once started ROOT/<name> and failed on a copy elsewhere."""
    import conftest
    import numpy as np

    copy = tmp_path / "elsewhere" / "copied_agent.py"
    copy.parent.mkdir()
    copy.write_text(
        "import pathlib, sys, time\n"
        "run = pathlib.Path('runs', sys.argv[sys.argv.index('--run-name') + 1])\n"
        "run.mkdir(parents=True)\n"
        "(run / 'checkpoint').write_text('ok')\n"
        "time.sleep(60)\n"
    )
    monkeypatch.setitem(conftest.SCRIPT_PATHS, copy.name, copy)
    delay = conftest.kill_after_checkpoint(copy.name, cwd=tmp_path, run_name="k", rng=np.random.default_rng(0))
    assert 0.0 <= delay <= 1.0 and (tmp_path / "runs" / "k" / "checkpoint").read_text() == "ok"
