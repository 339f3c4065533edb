"""The mutation check's bug table stays plantable: each bug's text still occurs once in its script.

Running the mutants takes tens of minutes (python tests/mutation.py); this keeps the table from going
stale silently when a script changes.
"""

import pytest

from tests.mutation import ROOT, Mutant, apply, load_mutants

SCRIPTS = ["dqn_cartpole.py", "dqn_atari.py", "a2c_atari.py", "ppo_minatar_jax.py", "ppo_minatar_cnn_jax.py"]
MUTANTS = load_mutants()


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_planted_bugs(script):
    assert sum(m.script == script for m in MUTANTS) >= 8, script


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: f"{m.script}:{m.bug}")
def test_mutant_applies_exactly_once(mutant):
    source = (ROOT / mutant.script).read_text()
    planted = apply(mutant, source)
    assert planted != source
    compile(planted, mutant.script, "exec")  # a realistic bug still runs; a syntax error kills nothing
    for test_file in mutant.tests:
        assert (ROOT / test_file).is_file(), test_file


def test_apply_refuses_ambiguous_or_missing_text():
    with pytest.raises(ValueError, match="2 times"):
        apply(Mutant("s.py", "bug", "x = 1", "x = 2", ()), "x = 1\nx = 1\n")
    with pytest.raises(ValueError, match="0 times"):
        apply(Mutant("s.py", "bug", "y = 1", "y = 2", ()), "x = 1\n")
    with pytest.raises(ValueError, match="indentation"):  # would move `z = 2` under `if`
        apply(Mutant("s.py", "bug", "  y = 1\n", "", ()), "if x:\n    y = 1\nz = 2\n")
