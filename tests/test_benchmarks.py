"""Tests of the benchmark harness benchmarks/run.py: the statistics on known inputs, the published
numbers, the report from fixture summaries, failed runs, the regression check, and the smoke suite
on the real scripts (the one slow test, about 2 minutes)."""

import importlib.util
import json
import shutil
import tomllib

import numpy as np
import pytest
from conftest import ROOT, run_script

FIXTURES = ROOT / "tests" / "fixtures" / "benchmarks"
ALL_SCRIPTS = {"dqn_cartpole.py", "dqn_atari.py", "a2c_atari.py", "ppo_minatar_jax.py", "ppo_minatar_cnn_jax.py"}


def _load_harness():
    spec = importlib.util.spec_from_file_location("benchmarks_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_harness()


def harness(*args, cwd, timeout=300):
    return run_script("benchmarks/run.py", *args, cwd=cwd, timeout=timeout)


# ---- statistics on known inputs ----
def test_iqm_known_values():
    assert bench.iqm([1, 2, 3, 4]) == pytest.approx(2.5)  # drops 1 and 4
    assert bench.iqm([8, 1, 7, 2, 6, 3, 5, 4]) == pytest.approx(4.5)  # keeps 3..6, order does not matter
    assert bench.iqm([1, 2, 3, 4, 100]) == pytest.approx(3.0)  # the outlier has no weight
    assert bench.iqm([0, 0, 0, 100]) == pytest.approx(0.0)
    assert bench.iqm([2.0, 4.0, 9.0]) == pytest.approx(5.0)  # fewer than 4 runs: the mean
    assert bench.iqm([7.0]) == pytest.approx(7.0)
    # Along an axis, as the bootstrap uses it.
    np.testing.assert_allclose(bench.iqm(np.array([[1, 2, 3, 4], [10, 20, 30, 40]]), axis=1), [2.5, 25.0])


def test_iqm_matches_scipy_trim_mean():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in range(1, 30):
        x = rng.normal(size=n) * 10
        assert bench.iqm(x) == pytest.approx(stats.trim_mean(x, 0.25))


def test_bootstrap_ci_known_inputs():
    # Resamples of [0, 1] have means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4.
    assert bench.bootstrap_ci([0.0, 1.0], np.mean) == pytest.approx((0.0, 1.0))
    assert bench.bootstrap_ci([5.0, 5.0, 5.0], bench.iqm) == pytest.approx((5.0, 5.0))
    assert bench.bootstrap_ci([3.0], bench.iqm) == pytest.approx((3.0, 3.0))  # one seed: zero width
    # Stratified: seeds are resampled within each task, so the pooled mean of task A in {0, 1}
    # (2 runs) and task B = [100] (1 run) is one of 100/3, 101/3, 102/3 - never e.g. (0+0+0)/3.
    lo, hi = bench.bootstrap_ci([np.array([0.0, 1.0]), np.array([100.0])], np.mean)
    assert (lo, hi) == pytest.approx((100 / 3, 102 / 3))
    # Same input, same interval (the report is reproducible); the interval holds the estimate.
    x = np.array([410.0, 455.0, 390.0, 440.0, 425.0, 400.0])
    assert bench.bootstrap_ci(x) == bench.bootstrap_ci(x)
    lo, hi = bench.bootstrap_ci(x)
    assert x.min() <= lo < bench.iqm(x) < hi <= x.max()
    # More seeds from the same distribution: a narrower interval.
    rng = np.random.default_rng(1)
    few, many = rng.normal(100, 20, size=5), rng.normal(100, 20, size=80)
    assert np.diff(bench.bootstrap_ci(many)) < np.diff(bench.bootstrap_ci(few))


def test_human_normalized_score():
    assert bench.human_normalized(401.2, 1.7, 31.8) == pytest.approx((401.2 - 1.7) / 30.1)  # 13.27
    assert bench.human_normalized(-20.7, -20.7, 9.3) == pytest.approx(0.0)  # random play
    assert bench.human_normalized(9.3, -20.7, 9.3) == pytest.approx(1.0)  # the human tester
    np.testing.assert_allclose(bench.human_normalized([363.9, 5774.7], 363.9, 5774.7), [0.0, 1.0])


# ---- published numbers ----
ISSUE_NUMBERS = {  # issue 6, verbatim
    "gymnax_ppo": {"Asterix": 15, "Breakout": 28, "Freeway": 58, "SpaceInvaders": 131},
    "nature_dqn": {"Breakout": (401.2, 26.9), "Pong": (18.9, 1.3), "BeamRider": (6846, 1619), "Enduro": 301.8,
                   "Qbert": 10596, "Seaquest": 5286, "SpaceInvaders": 1976},
    "ppo_paper_a2c": {"Breakout": 303.0, "Pong": 19.7, "BeamRider": 3031.7, "Qbert": 10065.7, "Seaquest": 1714.3,
                      "SpaceInvaders": 744.5},
    "cartpole_solved": {"CartPole-v1": 475},
}
ISSUE_NORMALIZERS = {"Breakout": (1.7, 31.8), "Pong": (-20.7, 9.3), "BeamRider": (363.9, 5774.7), "Enduro": (0.0, 309.6),
                     "Qbert": (163.9, 13455), "Seaquest": (68.4, 20181.8), "SpaceInvaders": (148.0, 1652.3)}


def test_reference_scores_are_the_published_numbers_with_source_and_protocol():
    refs = bench.load_references()
    got = {}
    for table_id, table in refs["tables"].items():
        assert table["source"].strip() and table["protocol"].strip() and table["rule"] in bench.RULES, table_id
        got[table_id] = {k: (v["score"], v["std"]) if "std" in v else v["score"] for k, v in table["scores"].items()}
    assert got == ISSUE_NUMBERS
    norm = refs["normalizers"]["atari"]
    assert norm["source"].strip() and norm["protocol"].strip()
    assert {k: (v["random"], v["human"]) for k, v in norm["scores"].items()} == ISSUE_NORMALIZERS
    # Each script finds its table whatever spelling of the env id it uses.
    assert bench.find_reference(refs, "dqn_atari.py", "BreakoutNoFrameskip-v4")["score"] == 401.2
    assert bench.find_reference(refs, "a2c_atari.py", "ALE/Pong-v5")["score"] == 19.7
    assert bench.find_reference(refs, "ppo_minatar_cnn_jax.py", "Breakout-MinAtar")["score"] == 28
    assert bench.find_reference(refs, "ppo_minatar_jax.py", "SpaceInvaders-MinAtar")["score"] == 131
    assert bench.find_reference(refs, "dqn_atari.py", "SpaceInvaders-MinAtar") is None  # not the Atari game
    assert bench.find_reference(refs, "ppo_minatar_jax.py", "Seaquest-MinAtar") is None  # none published
    assert bench.find_reference(refs, "dqn_cartpole.py", "CartPole-v1")["score"] == 475
    assert bench.find_normalizer(refs, "SpaceInvadersNoFrameskip-v4")[:2] == (148.0, 1652.3)
    assert bench.find_normalizer(refs, "SpaceInvaders-MinAtar") is None


def test_reference_curve_and_binned_comparison(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the bench scripts import run.py beside them
    spec = importlib.util.spec_from_file_location("bench_a2c_atari", ROOT / "benchmarks" / "bench_a2c_atari.py")
    bench_a2c = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_a2c)
    curve = bench.load_references()["curves"]["sb3_zoo_a2c_breakout"]
    assert curve["source"].strip() and curve["protocol"].strip()
    assert len(curve["bins"]) == len(curve["mean_score"]) == len(curve["games"])
    assert all(lo < hi for lo, hi in curve["bins"])
    assert all(a[1] == b[0] for a, b in zip(curve["bins"], curve["bins"][1:]))  # contiguous, no overlap
    # Bins are [lo, hi): a game at 250k belongs to the second bin; bins without games are left out.
    games = [(10, 1.0), (249_999, 3.0), (250_000, 5.0), (600_000, 2.0), (700_000, 4.0)]
    rows = bench_a2c.compare_with_reference(games, "BreakoutNoFrameskip-v4")["rows"]
    assert [(r["bin"], r["this_run"], r["this_run_games"]) for r in rows] == [
        ([0, 250_000], 2.0, 2), ([250_000, 500_000], 5.0, 1), ([500_000, 1_000_000], 3.0, 2)]
    assert [r["reference"] for r in rows] == curve["mean_score"][:3]
    assert bench_a2c.compare_with_reference(games, "PongNoFrameskip-v4") is None  # Breakout's curve only


# ---- report from fixture summaries ----
def test_report_from_fixture_summaries(tmp_path):
    summaries = json.loads((FIXTURES / "summaries.json").read_text())["summaries"]
    for s in summaries:
        run_dir = tmp_path / "runs" / f"{s['env_id']}__{s['script'][:-3]}__{s['seed']}"
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps(s))
    code = bench.main(["--report-only", "--out", str(tmp_path), "--progress-every", "1000"])
    assert code == 1  # Seaquest-MinAtar seed 2 has a NaN score: a failed run sets the exit code

    results = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["script"], r["env_id"]): r for r in results["rows"]}
    dqn = rows[("dqn_atari.py", "BreakoutNoFrameskip-v4")]
    assert dqn["seeds"] == [1, 2, 3] and dqn["mean"] == pytest.approx(390.0) and dqn["iqm"] == pytest.approx(390.0)
    assert dqn["hns"]["iqm"] == pytest.approx((390.0 - 1.7) / 30.1)
    assert dqn["hns"]["reference"] == pytest.approx((401.2 - 1.7) / 30.1)
    assert dqn["iqm_ci"][0] >= 350.0 and dqn["iqm_ci"][1] >= 401.2
    assert dqn["verdict"] == "pass (budget 10M < 12.5M)"  # judged, with the shorter budget said
    assert rows[("dqn_atari.py", "PongNoFrameskip-v4")]["verdict"].startswith("pass")  # 20 vs 18.9
    a2c = rows[("a2c_atari.py", "BreakoutNoFrameskip-v4")]
    assert a2c["iqm_ci"][1] <= 250.0 and a2c["verdict"] == "fail"  # every seed below 303
    minatar = rows[("ppo_minatar_jax.py", "Breakout-MinAtar")]
    assert minatar["iqm"] == pytest.approx(30.0)  # middle of 26, 29, 30, 31, 60
    assert minatar["mean"] == pytest.approx(35.2) and minatar["verdict"] == "pass"
    seaquest = rows[("ppo_minatar_jax.py", "Seaquest-MinAtar")]
    assert seaquest["seeds"] == [1] and seaquest["failed"] == 1 and "no reference" in seaquest["verdict"]
    # All-games HNS: IQM of the 6 pooled (game, seed) scores drops the lowest and the highest.
    pooled = sorted([(s - 1.7) / 30.1 for s in (350, 400, 420)] + [(s + 20.7) / 30.0 for s in (19, 20, 21)])
    (agg,) = [a for a in results["aggregates"] if a["script"] == "dqn_atari.py"]
    assert agg["games"] == 2 and agg["runs"] == 6 and agg["value"] == pytest.approx(np.mean(pooled[1:5]))
    assert agg["ci"][0] <= agg["value"] <= agg["ci"][1]

    report = (tmp_path / "report.md").read_text()
    for script in ("dqn_atari.py", "a2c_atari.py", "ppo_minatar_jax.py"):
        assert f"## {script}" in report
    assert "401.2 ± 26.9 (Nature DQN, 50M frames)" in report and "303 (A2C (PPO paper), 40M frames)" in report
    assert "28 (Gymnax PPO, 1e7 steps)" in report and "none published" in report
    assert "Extended Data Table 2" in report and "arXiv:1707.06347" in report and "gymnax README" in report
    assert "## Failed runs" in report and "NaN/inf in summary final_eval.mean" in report
    assert "All games: IQM of human-normalized score" in report
    plots = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert len(plots) == 5 and all((tmp_path / "plots" / p).stat().st_size > 5000 for p in plots)
    for p in plots:
        assert f"(plots/{p})" in report


# ---- failed runs ----
def test_failed_runs_are_reported_and_set_the_exit_code(tmp_path):
    out = tmp_path / "out"
    proc = harness("--suite", FIXTURES / "failing_suite.toml", "--out", out, "--progress-every", "1", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    failed = report.split("## Failed runs")[1]
    for reason in ("exit code 1: RuntimeError: planted crash", "NaN/inf in summary final_eval.mean",
                   "NaN in TensorBoard scalars losses/td_loss", "no summary.json written", "timed out after 4 s",
                   "script not found", "exit code 2: fake_agent.py: error: unrecognized arguments: --no-such-flag"):
        assert reason in failed, reason
    results = json.loads((out / "results.json").read_text())
    assert sum(r["status"] != "ok" for r in results["runs"]) == 7
    (cartpole,) = [r for r in results["rows"] if r["env_id"] == "CartPole-v1"]
    assert cartpole["seeds"] == [1] and cartpole["failed"] == 5 and cartpole["verdict"].startswith("FAILED 5/6")
    assert "7 of 8 runs failed" in proc.stdout and "done" in proc.stdout and "running" in proc.stdout


def test_bad_harness_input_exits_2(tmp_path):
    for args, word in ((["--suite", "nope"], "unknown --suite"), (["--compare", "no_such_baseline"], "no such baseline"),
                       (["--scripts", "nope.py"], "not in suite")):
        proc = harness(*args, "--out", tmp_path / "o", cwd=tmp_path)
        assert proc.returncode == 2 and word in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# ---- regression check ----
def test_regression_check_flags_planted_drop_and_passes_unchanged_run(tmp_path):
    suite = FIXTURES / "fake_suite.toml"
    base = harness("--suite", suite, "--out", tmp_path / "base", cwd=tmp_path)
    assert base.returncode == 0, base.stdout[-3000:]
    # A 20% drop of every seed's score.
    drop = harness("--suite", suite, "--out", tmp_path / "drop", "--extra-args", "--score-scale 0.8",
                   "--compare", tmp_path / "base", cwd=tmp_path)
    assert drop.returncode == 1 and "REGRESSION dqn_cartpole.py CartPole-v1: score dropped" in drop.stdout
    (check,) = json.loads((tmp_path / "drop" / "results.json").read_text())["comparison"]["checks"]
    assert check["flags"] == ["score dropped"] and check["diff_ci"][1] < 0
    assert "FLAGGED: score dropped" in (tmp_path / "drop" / "report.md").read_text()
    # The same drop planted in the baseline's own runs at report time (what --plant-drop is for).
    shutil.copytree(tmp_path / "base", tmp_path / "planted")
    planted = harness("--report-only", "--out", tmp_path / "planted", "--compare", tmp_path / "base",
                      "--plant-drop", "0.2", cwd=tmp_path)
    assert planted.returncode == 1 and "score dropped" in planted.stdout, planted.stdout[-3000:]
    assert "planted drop" in (tmp_path / "planted" / "report.md").read_text()
    # The same code again: same seeds, same scores, nothing flagged.
    same = harness("--suite", suite, "--out", tmp_path / "same", "--compare", tmp_path / "base" / "results.json",
                   cwd=tmp_path)
    assert same.returncode == 0 and "1 compared, none flagged" in same.stdout, same.stdout[-3000:]


def _results(scores, sps, budget=1000):
    scores = list(map(float, scores))
    row = {"script": "s.py", "env_id": "E-v0", "scores": scores, "budget": budget, "sps": float(np.mean(sps)),
           "iqm": float(bench.iqm(scores)), "iqm_ci": bench.bootstrap_ci(scores)}
    return {"rows": [row]}


def test_regression_check_rules():
    base = _results([410, 455, 390, 440, 425, 400], [1000] * 6)
    assert bench.compare_results(base, base)[0]["flags"] == []
    assert bench.compare_results(_results([410, 455, 390, 440, 425, 400], [800] * 6), base)[0]["flags"] == ["steps/s -20%"]
    assert bench.compare_results(_results([410, 455, 390, 440, 425, 400], [900] * 6), base)[0]["flags"] == []
    # Negative scores (Pong): a drop is a decrease, whatever the sign.
    pong = _results([-5, -3, -4, -6, -2], [100] * 5)
    assert bench.compare_results(_results([-9, -7, -8, -10, -6], [100] * 5), pong)[0]["flags"] == ["score dropped"]
    assert bench.compare_results(_results([-1, 1, 0, -2, 2], [100] * 5), pong)[0]["flags"] == []
    # One lucky or unlucky seed inside the spread is not a regression.
    assert bench.compare_results(_results([410, 455, 390, 440, 425, 330], [1000] * 6), base)[0]["flags"] == []
    # Different budgets are not compared.
    check = bench.compare_results(_results([1, 2, 3], [1], budget=5000), base)[0]
    assert not check["flags"] and "not comparable" in check["note"]


# ---- suites ----
def test_suites_match_the_issue(tmp_path):
    with open(ROOT / "benchmarks" / "suites.toml", "rb") as f:
        suites = tomllib.load(f)
    refs = bench.load_references()
    smoke = suites["smoke"]["runs"]
    assert {e["script"] for e in smoke} == ALL_SCRIPTS
    for e in smoke:  # every smoke row gets a reference, so the report's reference column is filled
        assert all(bench.find_reference(refs, e["script"], env) for env in e["env_ids"]), e
    quick = {e["script"]: e for e in suites["quick"]["runs"]}
    assert quick["dqn_cartpole.py"]["seeds"] == [1, 2, 3, 4, 5] and "total_timesteps" not in quick["dqn_cartpole.py"]
    for script in ("ppo_minatar_jax.py", "ppo_minatar_cnn_jax.py"):
        assert quick[script]["env_ids"] == ["Breakout-MinAtar"]
    full = {e["script"]: e for e in suites["full"]["runs"]}
    for script in ("dqn_atari.py", "a2c_atari.py"):
        assert full[script]["total_timesteps"] == 10_000_000 and len(full[script]["seeds"]) == 3
        assert {bench.env_family(e)[1] for e in full[script]["env_ids"]} == {"Breakout", "Pong", "BeamRider"}
    for script in ("ppo_minatar_jax.py", "ppo_minatar_cnn_jax.py"):
        assert full[script]["total_timesteps"] == 10_000_000 and len(full[script]["seeds"]) == 5
        assert len({bench.env_family(e)[1] for e in full[script]["env_ids"]}) == 5
    proc = harness("--suite", "full", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0 and "--env-id PongNoFrameskip-v4 --seed 3 --total-timesteps 10000000" in proc.stdout
    # --env-ids goes to the selected scripts of the same family only; --seeds replaces the seeds.
    proc = harness("--suite", "full", "--scripts", "dqn_atari.py", "ppo_minatar_jax.py", "--env-ids", "ALE/Pong-v5",
                   "Freeway-MinAtar", "--seeds", "7", "--dry-run", cwd=tmp_path)
    commands = [line for line in proc.stdout.splitlines() if "--env-id" in line]
    assert proc.returncode == 0 and len(commands) == 2, proc.stdout
    assert any("dqn_atari.py --env-id ALE/Pong-v5 --seed 7" in c for c in commands)
    assert any("ppo_minatar_jax.py --env-id Freeway-MinAtar --seed 7" in c for c in commands)


# ---- the smoke suite on the real scripts (CI) ----
def test_smoke_suite_runs_every_script(tmp_path):
    present = sorted(s for s in ALL_SCRIPTS if (ROOT / s).is_file())
    if not present:
        pytest.skip("none of the scripts is in the repository yet")
    out = tmp_path / "smoke"
    proc = harness("--suite", "smoke", "--scripts", *present, "--out", out, "--progress-every", "30",
                   cwd=tmp_path, timeout=420)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert all(r["status"] == "ok" for r in results["runs"])
    assert {r["script"] for r in results["rows"]} == set(present)
    report = (out / "report.md").read_text()
    for row in results["rows"]:
        assert row["reference"] is not None and row["sps"] > 0, row
        assert f"## {row['script']}" in report
    assert "none published" not in report and (out / "plots").is_dir()
    missing = sorted(ALL_SCRIPTS - set(present))
    if missing:
        pytest.skip(f"smoke suite ran without {', '.join(missing)} (not in the repository yet)")
