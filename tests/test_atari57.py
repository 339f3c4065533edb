"""Tests of the Atari-57 benchmark: the complete reference tables (Nature DQN's 49 games, DQN Zoo's 57),
the `atari57` and `atari57-quick` suites, and the report's human-normalized IQM with stratified-bootstrap
CIs over games and seeds and its performance profiles, on synthetic results of known HNS."""

import json
import sys

import numpy as np
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))  # the harness's modules import each other by name
import references  # noqa: E402
import results as res  # noqa: E402
import run  # noqa: E402
from report import render_report  # noqa: E402

ZOO = "atari57.dqn_zoo_57"


def test_reference_tables_are_complete_with_source_and_protocol():
    refs = references.load_references()
    nature, zoo = refs["atari57"]["nature_dqn_49"], refs["atari57"]["dqn_zoo_57"]
    for table in (nature, zoo):
        assert table["source"].strip() and table["protocol"].strip()
    assert len(nature["scores"]) == 49 and len(zoo["scores"]) == 57
    assert set(nature["scores"]) < set(zoo["scores"])  # the 8 games Nature lacks: Berzerk, Defender, ...
    assert set(zoo["scores"]) - set(nature["scores"]) == {
        "Berzerk", "Defender", "Phoenix", "Pitfall", "Skiing", "Solaris", "Surround", "YarsRevenge",
    }  # fmt: skip
    assert all({"score", "random", "human"} <= set(v) for v in nature["scores"].values())
    # Spot checks against the sources (pfrl README, atari-model-zoo scores.py, dqn_zoo atari_data.py).
    assert nature["scores"]["CrazyClimber"] == {"score": 114103.0, "random": 10781.0, "human": 35411.0}
    assert nature["scores"]["VideoPinball"] == {"score": 42684.0, "random": 16257.0, "human": 17298.0}
    assert nature["scores"]["Venture"]["score"] == 380.0 and nature["scores"]["Tennis"]["human"] == -8.9
    assert zoo["scores"]["Breakout"] == {"random": 1.7, "human": 30.5}
    assert zoo["scores"]["Skiing"] == {"random": -17098.1, "human": -4336.9}
    assert zoo["scores"]["Surround"] == {"random": -10.0, "human": 6.5}
    # The two tables' random scores agree up to the Nature table's rounding to integers above 1000.
    for game, entry in nature["scores"].items():
        assert abs(entry["random"] - zoo["scores"][game]["random"]) <= 0.5, game
    # The 7-game tables keep their numbers and their place: they are found first.
    assert references.find_reference(refs, "dqn_atari.py", "BreakoutNoFrameskip-v4")["std"] == 26.9
    alien = references.find_reference(refs, "dqn_atari.py", "AlienNoFrameskip-v4")
    assert alien["score"] == 3069.0 and alien["table"] == "nature_dqn_49" and alien["budget_steps"] == 12_500_000
    assert references.find_normalizer(refs, "ALE/Surround-v5", ZOO)[:2] == (-10.0, 6.5)
    assert references.find_normalizer(refs, "SurroundNoFrameskip-v4") is None  # not in the default table


def test_atari57_suites_run_both_scripts_on_all_57_games():
    suites = run.load_suites()
    zoo = set(references.load_references()["atari57"]["dqn_zoo_57"]["scores"])
    for name, steps, seeds in (("atari57", 10_000_000, [1, 2, 3]), ("atari57-quick", 100_000, [1])):
        suite = suites[name]
        assert suite["normalizer"] == ZOO
        plan = run.plan_runs(suite)
        assert {s["script"] for s in plan} == {"dqn_atari.py", "a2c_atari.py"}
        for script in ("dqn_atari.py", "a2c_atari.py"):
            mine = [s for s in plan if s["script"] == script]
            assert {references.env_family(s["env_id"]) for s in mine} == {("atari", g) for g in zoo}
            assert len(mine) == 57 * len(seeds) and {s["seed"] for s in mine} == set(seeds)
            assert {s["total_timesteps"] for s in mine} == {steps}
        # Surround has no NoFrameskip-v4 id: its v5 id runs without v5's sticky actions, like the others.
        surround = [s for s in plan if s["env_id"] == "ALE/Surround-v5"]
        assert len(surround) == 2 * len(seeds) and all(
            s["args"][-2:] == ["--sticky-action-prob", "0"] for s in surround
        )


def _synthetic(tmp_path, hns_of):
    """summary.json of dqn_atari.py on the 57 games x seeds 1-3, final score = random + hns * (human - random)
    with DQN Zoo's scores: hns_of(game index, seed) is each run's HNS by construction."""
    refs = references.load_references()
    table = refs["atari57"]["dqn_zoo_57"]["scores"]
    suite = run.load_suites()["atari57"]
    plan = run.plan_runs(suite, ["dqn_atari.py"])
    games = sorted(table)
    hns = {}
    for spec in plan:
        game = references.env_family(spec["env_id"])[1]
        value = hns_of(games.index(game), spec["seed"])
        hns.setdefault(game, []).append(value)
        rnd, hum = table[game]["random"], table[game]["human"]
        run_dir = tmp_path / "runs" / spec["run_name"]
        run_dir.mkdir(parents=True)
        summary = {
            "script": "dqn_atari.py",
            "env_id": spec["env_id"],
            "seed": spec["seed"],
            "total_timesteps": spec["total_timesteps"],
            "wall_time_s": 100.0,
            "sps": 1000.0,
            "final_eval": {"episodes": 30, "mean": rnd + value * (hum - rnd), "std": 1.0, "min": 0, "max": 1},
            "eval_history": [],
        }
        (run_dir / "summary.json").write_text(json.dumps(summary))
    meta = {"suite": "atari57", "created": "now", "host": "test", "workers": 1, "command": "test"}
    results = res.build_results(plan, None, tmp_path, refs, meta, normalizer=ZOO)
    return results, hns


def test_report_gives_human_normalized_iqm_with_stratified_ci_and_profiles(tmp_path):
    results, hns = _synthetic(tmp_path, lambda game, seed: 0.05 * game + 0.2 * seed - 0.2877)  # no HNS on a tau
    (agg,) = results["aggregates"]
    pooled = np.concatenate([hns[g] for g in sorted(hns)])
    assert agg["games"] == 57 and agg["runs"] == 171
    trim_mean = pytest.importorskip("scipy.stats").trim_mean
    assert agg["value"] == pytest.approx(trim_mean(pooled, 0.25), abs=1e-9)
    assert agg["ci"][0] < agg["value"] < agg["ci"][1]
    means = np.array([np.mean(hns[g]) for g in sorted(hns)])
    assert agg["median"] == pytest.approx(np.median(means)) and agg["mean"] == pytest.approx(np.mean(means))
    (profile,) = results["profiles"]
    expected = [np.mean([np.mean(np.array(hns[g]) > tau) for g in sorted(hns)]) for tau in profile["taus"]]
    assert profile["fraction"] == pytest.approx(expected) and len(profile["envs"]) == 57
    report = render_report(results, {})
    assert "All games: IQM of human-normalized score over games x seeds" in report
    assert "(57 games, 171 runs, stratified bootstrap)" in report
    assert "**DQN Zoo Atari-57** table" in report and "dqn_zoo/atari_data.py" in report
    assert (
        "## Performance profiles" in report and "| dqn_atari.py | human-normalized score, 57 env(s), 171 runs" in report
    )


def test_the_bootstrap_resamples_seeds_within_each_game(tmp_path):
    # Seeds of a game agree, games differ: a bootstrap that keeps each game's runs together (stratified)
    # has nothing to resample; one over the pooled runs would draw some games more often than others.
    results, _ = _synthetic(tmp_path, lambda game, seed: 0.1 * game)
    (agg,) = results["aggregates"]
    assert agg["ci"] == pytest.approx([agg["value"], agg["value"]])
    assert agg["median_ci"] == pytest.approx([agg["median"]] * 2) and agg["mean_ci"] == pytest.approx([agg["mean"]] * 2)
