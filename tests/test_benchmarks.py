"""Tests of the benchmark harness (benchmarks/run.py and the modules beside it): the statistics on
known inputs, the published numbers and curves, the curve command, the report from fixture summaries,
failed runs, the regression check, and the smoke suite on the real scripts (the one slow test, about
2 minutes)."""

import importlib.util
import json
import shutil
import sys
import tomllib

import numpy as np
import pytest
from conftest import ROOT, assert_bad_input, run_script

sys.path.insert(0, str(ROOT / "benchmarks"))  # the harness's modules import each other by name
import curve  # noqa: E402
import references  # noqa: E402
import results as res  # noqa: E402
import run  # noqa: E402
import stats  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "benchmarks"
ALL_SCRIPTS = {"dqn_cartpole.py", "dqn_atari.py", "a2c_atari.py", "ppo_minatar_jax.py", "ppo_minatar_cnn_jax.py"}


def harness(*args, cwd, timeout=300):
    return run_script("benchmarks/run.py", *args, cwd=cwd, timeout=timeout)


# ---- statistics on known inputs ----
def test_iqm_known_values():
    assert stats.iqm([1, 2, 3, 4]) == pytest.approx(2.5)  # drops 1 and 4
    assert stats.iqm([8, 1, 7, 2, 6, 3, 5, 4]) == pytest.approx(4.5)  # keeps 3..6, order does not matter
    assert stats.iqm([1, 2, 3, 4, 100]) == pytest.approx(3.0)  # the outlier has no weight
    assert stats.iqm([0, 0, 0, 100]) == pytest.approx(0.0)
    assert stats.iqm([2.0, 4.0, 9.0]) == pytest.approx(5.0)  # fewer than 4 runs: the mean
    assert stats.iqm([7.0]) == pytest.approx(7.0)
    # Along an axis, as the bootstrap uses it.
    np.testing.assert_allclose(stats.iqm(np.array([[1, 2, 3, 4], [10, 20, 30, 40]]), axis=1), [2.5, 25.0])


def test_iqm_matches_scipy_trim_mean():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in range(1, 30):
        x = rng.normal(size=n) * 10
        assert stats.iqm(x) == pytest.approx(scipy_stats.trim_mean(x, 0.25))


def test_bootstrap_ci_known_inputs():
    # Resamples of [0, 1] have means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4.
    assert stats.bootstrap_ci([0.0, 1.0], np.mean) == pytest.approx((0.0, 1.0))
    assert stats.bootstrap_ci([5.0, 5.0, 5.0], stats.iqm) == pytest.approx((5.0, 5.0))
    assert stats.bootstrap_ci([3.0], stats.iqm) == pytest.approx((3.0, 3.0))  # one seed: zero width
    # Stratified: seeds are resampled within each task, so the pooled mean of task A in {0, 1}
    # (2 runs) and task B = [100] (1 run) is one of 100/3, 101/3, 102/3 - never e.g. (0+0+0)/3.
    lo, hi = stats.bootstrap_ci([np.array([0.0, 1.0]), np.array([100.0])], np.mean)
    assert (lo, hi) == pytest.approx((100 / 3, 102 / 3))
    # Same input, same interval (the report is reproducible); the interval holds the estimate.
    x = np.array([410.0, 455.0, 390.0, 440.0, 425.0, 400.0])
    assert stats.bootstrap_ci(x) == stats.bootstrap_ci(x)
    lo, hi = stats.bootstrap_ci(x)
    assert x.min() <= lo < stats.iqm(x) < hi <= x.max()
    # More seeds from the same distribution: a narrower interval.
    rng = np.random.default_rng(1)
    few, many = rng.normal(100, 20, size=5), rng.normal(100, 20, size=80)
    assert np.diff(stats.bootstrap_ci(many)) < np.diff(stats.bootstrap_ci(few))


def test_probability_of_improvement_known_values():
    # x = [1, 2, 3] over y = [0, 2]: of the 6 pairs, 4 wins and 1 tie (2 vs 2) -> 4.5 / 6.
    assert stats.probability_of_improvement([1.0, 2.0, 3.0], [0.0, 2.0]) == pytest.approx(0.75)
    assert stats.probability_of_improvement([0.0, 2.0], [1.0, 2.0, 3.0]) == pytest.approx(
        0.25
    )  # P(Y > X) = 1 - P(X > Y)
    assert stats.probability_of_improvement([5.0, 5.0], [5.0, 5.0, 5.0]) == pytest.approx(0.5)  # all ties
    # Averaged over tasks, each task weighing the same: task A 0.75 (as above), task B 0 (scale 1000x).
    x, y = [[1.0, 2.0, 3.0], [1000.0]], [[0.0, 2.0], [2000.0, 3000.0]]
    assert stats.probability_of_improvement(x, y) == pytest.approx(0.375)
    # The Mann-Whitney U statistic of x over y (ties half) divided by the number of pairs.
    mannwhitneyu = pytest.importorskip("scipy.stats").mannwhitneyu
    rng = np.random.default_rng(0)
    for n, m in ((1, 1), (3, 5), (10, 7)):
        x, y = rng.integers(0, 4, size=n).astype(float), rng.integers(0, 4, size=m).astype(float)
        assert stats.probability_of_improvement(x, y) == pytest.approx(mannwhitneyu(x, y).statistic / (n * m))


def test_probability_of_improvement_ci_known_inputs():
    assert stats.probability_of_improvement_ci([1.0], [0.0]) == pytest.approx((1.0, 1.0))
    # Resamples of x = [0, 1] against y = [0.5] win 0, 1/2 or all of the time (probabilities 1/4, 1/2, 1/4).
    assert stats.probability_of_improvement_ci([0.0, 1.0], [0.5]) == pytest.approx((0.0, 1.0))
    # Stratified: with a second task that X always wins, the average stays within [0.5, 1].
    assert stats.probability_of_improvement_ci([[0.0, 1.0], [5.0]], [[0.5], [0.0]]) == pytest.approx((0.5, 1.0))
    x, y = [410.0, 455.0, 390.0, 440.0, 425.0, 400.0], [400.0, 380.0, 420.0, 395.0, 405.0]
    lo, hi = stats.probability_of_improvement_ci(x, y)
    assert lo < stats.probability_of_improvement(x, y) < hi and (lo, hi) == stats.probability_of_improvement_ci(x, y)


def test_performance_profile_known_values():
    taus = [-1.0, 0.0, 1.5, 3.0]
    # Strictly above tau: a run scoring exactly tau does not count (rliable's run-score distribution).
    np.testing.assert_allclose(stats.performance_profile([0.0, 1.0, 2.0, 3.0], taus), [1.0, 0.75, 0.5, 0.0])
    # Averaged over tasks, not pooled over runs: (1/2 + 4/4) / 2, not 5/6.
    assert stats.performance_profile([[0.0, 1.0], [5.0, 5.0, 5.0, 5.0]], [0.5]) == pytest.approx([0.75])
    # Leading axes are bootstrap resamples.
    np.testing.assert_allclose(stats.performance_profile([np.array([[0.0, 1.0], [1.0, 1.0]])], [0.5]), [[0.5], [1.0]])
    lo, hi = stats.performance_profile_bands([[0.0, 1.0], [5.0]], [0.5, 6.0])
    np.testing.assert_allclose(lo, [0.5, 0.0])  # task 1 resampled: 0, 1/2 or 1 above 0.5; task 2 always
    np.testing.assert_allclose(hi, [1.0, 0.0])


def test_human_normalized_score():
    assert stats.human_normalized(401.2, 1.7, 31.8) == pytest.approx((401.2 - 1.7) / 30.1)  # 13.27
    assert stats.human_normalized(-20.7, -20.7, 9.3) == pytest.approx(0.0)  # random play
    assert stats.human_normalized(9.3, -20.7, 9.3) == pytest.approx(1.0)  # the human tester
    np.testing.assert_allclose(stats.human_normalized([363.9, 5774.7], 363.9, 5774.7), [0.0, 1.0])


# ---- published numbers ----
ISSUE_NUMBERS = {  # issue 6, verbatim
    "gymnax_ppo": {"Asterix": 15, "Breakout": 28, "Freeway": 58, "SpaceInvaders": 131},
    "nature_dqn": {
        "Breakout": (401.2, 26.9),
        "Pong": (18.9, 1.3),
        "BeamRider": (6846, 1619),
        "Enduro": 301.8,
        "Qbert": 10596,
        "Seaquest": 5286,
        "SpaceInvaders": 1976,
    },
    "ppo_paper_a2c": {
        "Breakout": 303.0,
        "Pong": 19.7,
        "BeamRider": 3031.7,
        "Qbert": 10065.7,
        "Seaquest": 1714.3,
        "SpaceInvaders": 744.5,
    },
    "cartpole_solved": {"CartPole-v1": 475},
}
ISSUE_NORMALIZERS = {
    "Breakout": (1.7, 31.8),
    "Pong": (-20.7, 9.3),
    "BeamRider": (363.9, 5774.7),
    "Enduro": (0.0, 309.6),
    "Qbert": (163.9, 13455),
    "Seaquest": (68.4, 20181.8),
    "SpaceInvaders": (148.0, 1652.3),
}


def test_reference_scores_are_the_published_numbers_with_source_and_protocol():
    refs = references.load_references()
    got = {}
    for table_id, table in refs["tables"].items():
        assert table["source"].strip() and table["protocol"].strip() and table["rule"] in res.RULES, table_id
        got[table_id] = {k: (v["score"], v["std"]) if "std" in v else v["score"] for k, v in table["scores"].items()}
    assert got == ISSUE_NUMBERS
    norm = refs["normalizers"]["atari"]
    assert norm["source"].strip() and norm["protocol"].strip()
    assert {k: (v["random"], v["human"]) for k, v in norm["scores"].items()} == ISSUE_NORMALIZERS
    # Each script finds its table whatever spelling of the env id it uses.
    assert references.find_reference(refs, "dqn_atari.py", "BreakoutNoFrameskip-v4")["score"] == 401.2
    assert references.find_reference(refs, "a2c_atari.py", "ALE/Pong-v5")["score"] == 19.7
    assert references.find_reference(refs, "ppo_minatar_cnn_jax.py", "Breakout-MinAtar")["score"] == 28
    assert references.find_reference(refs, "ppo_minatar_jax.py", "SpaceInvaders-MinAtar")["score"] == 131
    assert references.find_reference(refs, "dqn_atari.py", "SpaceInvaders-MinAtar") is None  # not the Atari game
    assert references.find_reference(refs, "ppo_minatar_jax.py", "Seaquest-MinAtar") is None  # none published
    assert references.find_reference(refs, "dqn_cartpole.py", "CartPole-v1")["score"] == 475
    assert references.find_normalizer(refs, "SpaceInvadersNoFrameskip-v4")[:2] == (148.0, 1652.3)
    assert references.find_normalizer(refs, "SpaceInvaders-MinAtar") is None


def test_reference_curves_have_source_protocol_and_bins():
    curves = references.load_references()["curves"]
    assert {"sb3_zoo_a2c_breakout", "sb3_zoo_dqn_breakout", "sb3_zoo_dqn_pong"} <= curves.keys()
    for name, c in curves.items():
        assert c["source"].strip() and c["protocol"].strip() and c["scripts"], name
        bins = curve.curve_bins(c)
        assert len(bins) == len(c["mean_score"]) == len(c["games"]) and all(lo < hi for lo, hi in bins), name
        assert bins[0][0] == 0 and all(a[1] == b[0] for a, b in zip(bins, bins[1:])), name  # contiguous
    # SB3 Zoo's DQN logs (issue 13): 100k-step bins to the end of the 1e7-step runs; Pong turns
    # positive between 900k and 1M steps.
    breakout, pong = curves["sb3_zoo_dqn_breakout"], curves["sb3_zoo_dqn_pong"]
    assert breakout["mean_score"][:7] == [1.31, 1.82, 3.61, 4.80, 6.77, 8.56, 12.91]
    assert curve.curve_bins(breakout)[1] == [100_000, 200_000] and len(breakout["mean_score"]) == 102
    assert pong["mean_score"][8] < 0 < pong["mean_score"][9] and len(pong["mean_score"]) == 101
    assert curve.find_curve(references.load_references(), "dqn_atari.py", "ALE/Pong-v5")[0] == "sb3_zoo_dqn_pong"


def test_binned_comparison_with_a_reference_curve():
    ref = {
        "name": "ref",
        "source": "s",
        "protocol": "p",
        "bins": [
            [0, 250_000],
            [250_000, 500_000],
            [500_000, 1_000_000],
            [1_000_000, 2_000_000],
            [2_000_000, 3_000_000],
        ],
        "mean_score": [1.0, 2.0, 3.0, 4.0, 5.0],
        "games": [10, 20, 30, 40, 50],
    }
    # Bins are [lo, hi): a game at 250k belongs to the second bin; an empty bin before the run's last
    # game is kept (no games), bins after it are left out.
    games = [(10, 1.0), (249_999, 3.0), (250_000, 5.0), (2_100_000, 2.0), (2_200_000, 4.0)]
    rows = curve.compare_with_curve(games, ref)["rows"]
    assert [(r["bin"], r["this_run"], r["this_run_games"], r["reference"], r["reference_games"]) for r in rows] == [
        ([0, 250_000], 2.0, 2, 1.0, 10),
        ([250_000, 500_000], 5.0, 1, 2.0, 20),
        ([500_000, 1_000_000], None, 0, 3.0, 30),
        ([1_000_000, 2_000_000], None, 0, 4.0, 40),
        ([2_000_000, 3_000_000], 3.0, 2, 5.0, 50),
    ]
    assert curve.curve_bins({"bin_steps": 100, "mean_score": [1, 2, 3]}) == [[0, 100], [100, 200], [200, 300]]
    # Each script and game finds its own curve; A2C has none for Pong.
    refs = references.load_references()
    a2c = curve.reference_comparison(games, "a2c_atari.py", "BreakoutNoFrameskip-v4", refs)
    assert a2c["reference"] == refs["curves"]["sb3_zoo_a2c_breakout"]["name"]
    dqn = curve.reference_comparison(games, "dqn_atari.py", "BreakoutNoFrameskip-v4", refs)
    assert dqn["rows"][0]["reference"] == 1.31
    assert curve.reference_comparison(games, "a2c_atari.py", "PongNoFrameskip-v4", refs) is None


def test_bench_a2c_atari_uses_the_shared_curve_comparison(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_a2c_atari", ROOT / "benchmarks" / "bench_a2c_atari.py")
    bench_a2c = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_a2c)
    assert bench_a2c.reference_comparison is curve.reference_comparison


def test_dqn_atari_profile_counts_each_part_by_its_caller(tmp_path):
    """The profile's parts are calls from the training loop: the evaluations' forward passes are left out."""
    import cProfile

    import bench_dqn_atari

    (tmp_path / "dqn_atari.py").write_text(
        "import time\n"
        "def select_actions(): time.sleep(0.01)\n"
        "def dqn_loss(): time.sleep(0.02)\n"
        "def dqn_update(): dqn_loss()\n"
        "def evaluate(): [select_actions() for _ in range(5)]\n"
        "def train():\n"
        "    for _ in range(3): select_actions(); dqn_update()\n"
        "    evaluate()\n"
    )
    spec = importlib.util.spec_from_file_location("fake_dqn_atari", tmp_path / "dqn_atari.py")
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    profiler = cProfile.Profile()
    profiler.runcall(fake.train)
    profiler.dump_stats(tmp_path / "p.prof")
    parts = bench_dqn_atari.profile_parts(tmp_path / "p.prof")
    loop = parts["training loop (train() less evaluations)"]["s"]
    assert loop == pytest.approx(0.09, abs=0.03)  # the 0.05 s of evaluation are not in it
    assert parts["action selection (epsilon-greedy, 1 forward)"]["calls"] == 3
    assert parts["update"]["calls"] == parts["update: forward passes and loss"]["calls"] == 3
    assert parts["update: forward passes and loss"]["share"] == pytest.approx(0.06 / loop, abs=0.1)
    assert "env step (AtariVectorEnv, C++ threads)" not in parts


def _fake_run(run_dir, points):
    """A run folder with TensorBoard training returns as the scripts log them (SummaryWriter)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir))
    for step, value in points:
        writer.add_scalar("charts/episodic_return", value, step)
    writer.close()


def test_curve_command_prints_the_run_beside_its_reference(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "BreakoutNoFrameskip-v4__dqn_atari__1__1700000000"
    _fake_run(run_dir, [(50_000, 1.0), (90_000, 2.0), (150_000, 4.0), (310_000, 6.0), (320_000, 8.0)])
    assert curve.main([str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "dqn_atari.py on BreakoutNoFrameskip-v4): 5 training games" in out and "DLR-RM/rl-trained-agents" in out
    table = [line.split() for line in out.splitlines()[-4:]]
    assert table == [
        ["0-100k", "1.50", "2", "1.31", "547"],
        ["100k-200k", "4.00", "1", "1.82", "493"],
        ["200k-300k", "—", "0", "3.61", "372"],
        ["300k-400k", "7.00", "2", "4.80", "323"],
    ]
    # A named curve instead of the run's own; an ALE/ run name finds the game's curve.
    assert curve.main([str(run_dir), "--reference", "sb3_zoo_a2c_breakout"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split() == ["250k-500k", "7.00", "2", "1.40", "250"]
    ale = tmp_path / "runs" / "ALE-Pong-v5__dqn_atari__2__1700000000"
    _fake_run(ale, [(950_000, 3.0)])
    assert curve.main([str(ale)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split() == ["900k-1M", "3.00", "1", "6.09", "33"]
    # A run named by hand, still in progress (no summary.json): --reference names its curve.
    custom = tmp_path / "runs" / "a2c_breakout_s101"
    _fake_run(custom, [(100_000, 2.0)])
    assert curve.main([str(custom), "--reference", "sb3_zoo_a2c_breakout"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{custom}: 1 training games, last at step 100,000"


def test_curve_command_bad_input(tmp_path):
    run_dir = tmp_path / "elsewhere" / "CartPole-v1__dqn_cartpole__1__1700000000"
    _fake_run(run_dir, [(100, 20.0)])
    assert_bad_input("benchmarks/curve.py", run_dir, cwd=tmp_path, mentions=["no reference curve", "--reference"])
    assert_bad_input(
        "benchmarks/curve.py",
        run_dir,
        "--reference",
        "nope",
        cwd=tmp_path,
        mentions=["--reference nope", "sb3_zoo_dqn_pong"],
    )


# ---- report from fixture summaries ----
def test_report_from_fixture_summaries(tmp_path):
    summaries = json.loads((FIXTURES / "summaries.json").read_text())["summaries"]
    for s in summaries:
        run_dir = tmp_path / "runs" / f"{s['env_id']}__{s['script'][:-3]}__{s['seed']}"
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps(s))
    code = run.main(["--report-only", "--out", str(tmp_path), "--progress-every", "1000"])
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
    # Performance profiles on the normalized score (HNS on Atari, score / published score elsewhere;
    # Seaquest-MinAtar has no reference): fractions of runs above each tau, averaged over envs.
    profiles = {p["script"]: p for p in results["profiles"]}
    assert profiles["dqn_atari.py"]["taus"] == [0.1, 0.25, 0.5, 1.0, 2.0, 5.0]
    assert profiles["dqn_atari.py"]["fraction"] == pytest.approx([1, 1, 1, 1, 0.5, 0.5])  # Pong HNS 1.3-1.4
    assert profiles["a2c_atari.py"]["fraction"][-1] == pytest.approx(2 / 3)  # HNS 4.9, 6.6, 8.2
    minatar = profiles["ppo_minatar_jax.py"]
    assert minatar["envs"] == ["Breakout-MinAtar"] and minatar["metric"] == "score / published score"
    assert minatar["fraction"] == pytest.approx([1, 1, 1, 0.8, 0.2, 0])  # 26/28 is the one below 1
    assert minatar["ci"][3][0] < 0.8 < minatar["ci"][3][1]
    assert "## Performance profiles" in report
    assert "| ppo_minatar_jax.py | score / published score, 1 env(s), 5 runs" in report
    # Probability of improvement between the scripts that ran the same env: every A2C seed is below every DQN seed.
    (pair,) = results["improvement"]
    assert (pair["x"], pair["y"], pair["envs"]) == ("a2c_atari.py", "dqn_atari.py", ["BreakoutNoFrameskip-v4"])
    assert pair["value"] == 0.0 and "## Probability of improvement" in report
    assert "| a2c_atari.py | dqn_atari.py | BreakoutNoFrameskip-v4 | 0.00 [0.00, 0.00]" in report
    # The report names the human-score table behind HNS, and the other table it is not.
    assert "human and random scores from the **Nature DQN (Mnih et al. 2015)** table" in report
    assert "Breakout 30.5 (here 31.8), Pong 14.6 (here 9.3)" in report
    plots = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert len(plots) == 8 and all(
        (tmp_path / "plots" / p).stat().st_size > 5000 for p in plots
    )  # 5 curves, 3 profiles
    for p in plots:
        assert f"(plots/{p})" in report


# ---- failed runs ----
def test_failed_runs_are_reported_and_set_the_exit_code(tmp_path):
    out = tmp_path / "out"
    proc = harness("--suite", FIXTURES / "failing_suite.toml", "--out", out, "--progress-every", "1", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    failed = report.split("## Failed runs")[1]
    for reason in (
        "exit code 1: RuntimeError: planted crash",
        "NaN/inf in summary final_eval.mean",
        "NaN in TensorBoard scalars losses/td_loss",
        "no summary.json written",
        "timed out after 4 s",
        "script not found",
        "exit code 2: fake_agent.py: error: unrecognized arguments: --no-such-flag",
    ):
        assert reason in failed, reason
    results = json.loads((out / "results.json").read_text())
    assert sum(r["status"] != "ok" for r in results["runs"]) == 7
    (cartpole,) = [r for r in results["rows"] if r["env_id"] == "CartPole-v1"]
    assert cartpole["seeds"] == [1] and cartpole["failed"] == 5 and cartpole["verdict"].startswith("FAILED 5/6")
    assert "7 of 8 runs failed" in proc.stdout and "done" in proc.stdout and "running" in proc.stdout


def test_bad_harness_input_exits_2(tmp_path):
    for args, word in (
        (["--suite", "nope"], "unknown --suite"),
        (["--compare", "no_such_baseline"], "no such baseline"),
        (["--scripts", "nope.py"], "not in suite"),
    ):
        proc = harness(*args, "--out", tmp_path / "o", cwd=tmp_path)
        assert proc.returncode == 2 and word in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# ---- regression check ----
def test_regression_check_flags_planted_drop_and_passes_unchanged_run(tmp_path):
    suite = FIXTURES / "fake_suite.toml"
    base = harness("--suite", suite, "--out", tmp_path / "base", cwd=tmp_path)
    assert base.returncode == 0, base.stdout[-3000:]
    # A 20% drop of every seed's score.
    drop = harness(
        "--suite",
        suite,
        "--out",
        tmp_path / "drop",
        "--extra-args",
        "--score-scale 0.8",
        "--compare",
        tmp_path / "base",
        cwd=tmp_path,
    )
    assert drop.returncode == 1 and "REGRESSION dqn_cartpole.py CartPole-v1: score dropped" in drop.stdout
    (check,) = json.loads((tmp_path / "drop" / "results.json").read_text())["comparison"]["checks"]
    assert check["flags"] == ["score dropped"] and check["diff_ci"][1] < 0
    report = (tmp_path / "drop" / "report.md").read_text()
    assert "FLAGGED: score dropped" in report
    # Probability of improvement over the baseline (reported, not a flag): as scipy's Mann-Whitney U.
    base_scores = json.loads((tmp_path / "base" / "results.json").read_text())["rows"][0]["scores"]
    drop_scores = json.loads((tmp_path / "drop" / "results.json").read_text())["rows"][0]["scores"]
    u = pytest.importorskip("scipy.stats").mannwhitneyu(drop_scores, base_scores).statistic
    assert check["poi"] == pytest.approx(u / 36) and check["poi"] < 0.5 and check["poi_ci"][0] <= check["poi"]
    assert "P(this > baseline)" in report and "dqn_cartpole.py over 1 env(s): P(this > baseline) = **" in report
    assert "| dqn_cartpole.py (baseline) |" in report  # the baseline's performance profile beside this one
    # The same drop planted in the baseline's own runs at report time (what --plant-drop is for).
    shutil.copytree(tmp_path / "base", tmp_path / "planted")
    planted = harness(
        "--report-only",
        "--out",
        tmp_path / "planted",
        "--compare",
        tmp_path / "base",
        "--plant-drop",
        "0.2",
        cwd=tmp_path,
    )
    assert planted.returncode == 1 and "score dropped" in planted.stdout, planted.stdout[-3000:]
    assert "planted drop" in (tmp_path / "planted" / "report.md").read_text()
    # The same code again: same seeds, same scores, nothing flagged.
    same = harness(
        "--suite", suite, "--out", tmp_path / "same", "--compare", tmp_path / "base" / "results.json", cwd=tmp_path
    )
    assert same.returncode == 0 and "1 compared, none flagged" in same.stdout, same.stdout[-3000:]
    (check,) = json.loads((tmp_path / "same" / "results.json").read_text())["comparison"]["checks"]
    assert check["poi"] == 0.5  # the same scores: every pair a tie or mirrored


def _results(scores, sps, budget=1000):
    scores = list(map(float, scores))
    row = {
        "script": "s.py",
        "env_id": "E-v0",
        "scores": scores,
        "budget": budget,
        "sps": float(np.mean(sps)),
        "iqm": float(stats.iqm(scores)),
        "iqm_ci": stats.bootstrap_ci(scores),
    }
    return {"rows": [row]}


def test_regression_check_rules():
    base = _results([410, 455, 390, 440, 425, 400], [1000] * 6)
    assert res.compare_results(base, base)[0]["flags"] == []
    assert res.compare_results(_results([410, 455, 390, 440, 425, 400], [800] * 6), base)[0]["flags"] == [
        "steps/s -20%"
    ]
    assert res.compare_results(_results([410, 455, 390, 440, 425, 400], [900] * 6), base)[0]["flags"] == []
    # Negative scores (Pong): a drop is a decrease, whatever the sign.
    pong = _results([-5, -3, -4, -6, -2], [100] * 5)
    assert res.compare_results(_results([-9, -7, -8, -10, -6], [100] * 5), pong)[0]["flags"] == ["score dropped"]
    assert res.compare_results(_results([-1, 1, 0, -2, 2], [100] * 5), pong)[0]["flags"] == []
    # One lucky or unlucky seed inside the spread is not a regression.
    assert res.compare_results(_results([410, 455, 390, 440, 425, 330], [1000] * 6), base)[0]["flags"] == []
    # Different budgets are not compared.
    check = res.compare_results(_results([1, 2, 3], [1], budget=5000), base)[0]
    assert not check["flags"] and "not comparable" in check["note"]


# ---- suites ----
def test_suites_match_the_issue(tmp_path):
    with open(ROOT / "benchmarks" / "suites.toml", "rb") as f:
        suites = tomllib.load(f)
    refs = references.load_references()
    smoke = suites["smoke"]["runs"]
    assert {e["script"] for e in smoke} == ALL_SCRIPTS
    for e in smoke:  # every smoke row gets a reference, so the report's reference column is filled
        assert all(references.find_reference(refs, e["script"], env) for env in e["env_ids"]), e
    quick = {e["script"]: e for e in suites["quick"]["runs"]}
    assert quick["dqn_cartpole.py"]["seeds"] == [1, 2, 3, 4, 5] and "total_timesteps" not in quick["dqn_cartpole.py"]
    for script in ("ppo_minatar_jax.py", "ppo_minatar_cnn_jax.py"):
        assert quick[script]["env_ids"] == ["Breakout-MinAtar"]
    full = {e["script"]: e for e in suites["full"]["runs"]}
    for script in ("dqn_atari.py", "a2c_atari.py"):
        assert full[script]["total_timesteps"] == 10_000_000 and len(full[script]["seeds"]) == 3
        assert {references.env_family(e)[1] for e in full[script]["env_ids"]} == {"Breakout", "Pong", "BeamRider"}
    for script in ("ppo_minatar_jax.py", "ppo_minatar_cnn_jax.py"):
        assert full[script]["total_timesteps"] == 10_000_000 and len(full[script]["seeds"]) == 5
        assert len({references.env_family(e)[1] for e in full[script]["env_ids"]}) == 5
    proc = harness("--suite", "full", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0 and "--env-id PongNoFrameskip-v4 --seed 3 --total-timesteps 10000000" in proc.stdout
    # --env-ids goes to the selected scripts of the same family only; --seeds replaces the seeds.
    proc = harness(
        "--suite",
        "full",
        "--scripts",
        "dqn_atari.py",
        "ppo_minatar_jax.py",
        "--env-ids",
        "ALE/Pong-v5",
        "Freeway-MinAtar",
        "--seeds",
        "7",
        "--dry-run",
        cwd=tmp_path,
    )
    commands = [line for line in proc.stdout.splitlines() if "--env-id" in line]
    assert proc.returncode == 0 and len(commands) == 2, proc.stdout
    assert any("dqn_atari.py --env-id ALE/Pong-v5 --seed 7" in c for c in commands)
    assert any("ppo_minatar_jax.py --env-id Freeway-MinAtar --seed 7" in c for c in commands)

    # Two entries of one script narrowed to the same env and seeds plan each run once: a second copy
    # would share the first's run folder, and its launch would delete the first's finished result.
    plan = run.plan_runs(run.load_suites()["unseen"], ["ppo_minatar_jax.py"], ["Breakout-MinAtar"], [104, 105])
    assert [r["run_name"] for r in plan] == [f"Breakout-MinAtar__ppo_minatar_jax__{s}" for s in (104, 105)]


# ---- the smoke suite on the real scripts (CI) ----
def test_smoke_suite_runs_every_script(tmp_path):
    present = sorted(s for s in ALL_SCRIPTS if (ROOT / s).is_file())
    if not present:
        pytest.skip("none of the scripts is in the repository yet")
    out = tmp_path / "smoke"
    proc = harness(
        "--suite", "smoke", "--scripts", *present, "--out", out, "--progress-every", "30", cwd=tmp_path, timeout=420
    )
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


def test_report_seeds_never_tune():
    """Headline scores come from seeds no default was chosen on (issue 13): the two sets are disjoint, the
    `unseen` suite uses report seeds only, and every other suite uses none of them."""
    with open(ROOT / "benchmarks/suites.toml", "rb") as f:
        data = tomllib.load(f)
    tuning, report = set(data["tuning_seeds"]), set(data["report_seeds"])
    assert len(report) >= 10 and not tuning & report
    for name, suite in run.load_suites().items():
        for entry in suite["runs"]:
            used = set(entry["seeds"])
            assert used <= report if name == "unseen" else not used & report, (name, entry["script"])


def test_bench_ppo_update_counts_flops_and_sums_op_time_by_kind(tmp_path):
    import gzip

    import bench_ppo_update
    import jax
    import jax.numpy as jnp

    x = jnp.ones((64, 32))
    assert bench_ppo_update.flops_of(lambda a, b: a @ b, x, x.T) == 2 * 64 * 32 * 64
    # XLA counts a loop's body once, whatever its length: why the update's FLOPs are summed from its parts.
    looped = bench_ppo_update.flops_of(
        lambda a: jax.lax.scan(lambda c, _: (c @ a, None), a, None, length=5)[0], x @ x.T
    )
    assert looped < 2 * 2 * 64**3
    trace = tmp_path / "plugins" / "profile" / "run1" / "perfetto_trace.json.gz"
    trace.parent.mkdir(parents=True)
    events = [
        {"ph": "X", "name": "ynn_fusion.12", "dur": 30},
        {"ph": "X", "name": "ynn_fusion.3", "dur": 30},
        {"ph": "X", "name": "concatenate.171", "dur": 40},
        {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 1000},  # the executor around the ops, not an op
        {"ph": "X", "name": "$api.py:2479 block_until_ready", "dur": 1000},
        {"ph": "i", "name": "marker"},
    ]
    with gzip.open(trace, "wt") as f:
        json.dump({"traceEvents": events}, f)
    assert bench_ppo_update.op_time_share(tmp_path) == {"ynn_fusion": 0.6, "concatenate": 0.4}
