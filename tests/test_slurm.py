"""Tests of the Slurm launcher (benchmarks/run.py --launcher slurm, benchmarks/cluster.py) against a real
one-node Slurm cluster on this machine: the smoke suite as one job array and its report, a crashed task and
one cut by Slurm's --time, a rerun that resubmits only the failed runs, a requeued task that resumes its run,
the same results and regression verdict as a local launch, and bad input (exit 2, nothing submitted).

The cluster: the one SLURM_CONF names when benchmarks/slurm/local_cluster.sh started it (`.ci/run` does),
else one these tests start in a temporary folder on free ports and stop at the end. Without sbatch on PATH
the cluster tests are skipped, or fail under REQUIRE_SLURM=1 (set by `.ci/run`, which installs Slurm, so
that CI never passes by skipping them).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))  # the harness's modules import each other by name
import cluster  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "benchmarks"
LOCAL_CLUSTER = ROOT / "benchmarks" / "slurm" / "local_cluster.sh"
SMOKE_SCRIPTS = {"dqn_cartpole.py", "dqn_atari.py", "a2c_atari.py", "ppo_minatar_jax.py", "ppo_minatar_cnn_jax.py"}


def bench(*args, env, cwd, timeout=300):
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_exit_2(proc, words: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2 and words in err and "\n" not in err and "Traceback" not in err, proc.stderr


def squeue_jobs(env) -> set:
    """Every array job the controller knows, ended ones included (local_cluster.sh keeps them a day)."""
    proc = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%F"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def squeue_state(job: str, env) -> str:
    proc = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", job, "-o", "%T|%r"], env=env, capture_output=True, text=True
    )
    return proc.stdout.strip()


def jobs_of(out: Path) -> dict:
    return json.loads((out / "slurm" / "jobs.json").read_text())


def results_of(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


# ---- the cluster ----
def need_slurm(reason: str) -> None:
    if os.environ.get("REQUIRE_SLURM") == "1":
        pytest.fail(f"REQUIRE_SLURM=1, but {reason}")
    pytest.skip(reason)


def bench_cluster_conf(env) -> bool:
    """Whether SLURM_CONF names a running cluster of local_cluster.sh (ClusterName=bench): one node on this
    machine, safe to fill with test jobs. A real cluster's would run them on nodes that lack this tmp folder."""
    conf = env.get("SLURM_CONF")
    if not conf or not Path(conf).is_file() or "ClusterName=bench" not in Path(conf).read_text().split():
        return False
    return subprocess.run(["sinfo", "-h"], env=env, capture_output=True, timeout=30).returncode == 0


def free_port_pair() -> int:
    """A port P with P and P + 1 free (slurmctld and slurmd)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two adjacent free ports")


@pytest.fixture(scope="module")
def slurm_env():
    if shutil.which("sbatch") is None:
        need_slurm(
            "no sbatch on PATH: install Slurm (apt-get install slurmctld slurmd munge slurm-client); .ci/run does"
        )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if bench_cluster_conf(env):
        yield env
        return
    missing = [cmd for cmd in ("slurmctld", "slurmd", "munged", "mungekey") if shutil.which(cmd) is None]
    if missing:
        need_slurm(f"sbatch is on PATH but {', '.join(missing)} is not, so no local cluster can be started")
    # Not under pytest's tmp folder: munged wants every folder above its socket searchable by all.
    state = Path(tempfile.mkdtemp(prefix="bench-slurm-test-"))
    # 6 CPUs advertised on 2 cores: the smoke suite's 2 runs at a time and the fake agents' light tasks
    # all run side by side, so the module takes about as long as its slowest flow (the 1-minute --time).
    env.update(BENCH_SLURM_DIR=str(state), BENCH_SLURM_PORT=str(free_port_pair()), BENCH_SLURM_CPUS="6")
    proc = subprocess.run([str(LOCAL_CLUSTER), "start"], env=env, capture_output=True, text=True, timeout=120)
    env["SLURM_CONF"] = str(state / "slurm.conf")
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield env
    finally:
        subprocess.run([str(LOCAL_CLUSTER), "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def smoke_submission(slurm_env, tmp_path_factory):
    """The smoke suite submitted at the module's start, so that its runs go on while the other tests run;
    the last test of the module follows it to its report."""
    out = tmp_path_factory.mktemp("smoke") / "out"
    start = time.time()
    proc = bench("--suite", "smoke", "--launcher", "slurm", "--out", out, env=slurm_env, cwd=out.parent)
    return out, proc, time.time() - start


# ---- without a cluster ----
def test_parse_states_reads_squeue_and_sacct_lines():
    text = "12_[3-5,7%2]|PENDING\n12_1|RUNNING\n12_0|CANCELLED by 0\n13|COMPLETED\nno bar here\n"
    assert cluster.parse_states(text) == {
        "12_3": "PENDING",
        "12_4": "PENDING",
        "12_5": "PENDING",
        "12_7": "PENDING",
        "12_1": "RUNNING",
        "12_0": "CANCELLED",
        "13": "COMPLETED",
    }


def test_batch_script_is_one_array_of_the_scripts_own_cli(tmp_path):
    proc = bench(
        "--suite",
        FIXTURES / "slurm_suite.toml",
        "--launcher",
        "slurm",
        "--partition",
        "gpu",
        "--gpus-per-run",
        "1",
        "--cpus-per-run",
        "4",
        "--mem",
        "16G",
        "--requeue",
        "--workers",
        "2",
        "--out",
        "rel",
        "--dry-run",
        env=os.environ,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    out = (tmp_path / "rel").resolve()
    for line in (
        "#SBATCH --array=0-2%2",  # one task per run, --workers at a time
        f"#SBATCH --chdir={out}",  # absolute: the task does not depend on where sbatch ran
        f"#SBATCH --output={out}/logs/slurm/%A_%a.out",
        "#SBATCH --time=1",  # timeout_s 30 rounded up to Slurm's minute
        "#SBATCH --partition=gpu",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=16G",
        "#SBATCH --requeue",
        'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"',
    ):
        assert line in script.splitlines(), line
    fake = FIXTURES / "fake_agent.py"
    assert f"1) run=CartPole-v1__dqn_cartpole__2 cmd=({sys.executable} {fake} --env-id CartPole-v1 --seed 2" in script
    assert 'cmd=("${cmd[0]}" "${cmd[1]}" --resume "$PWD/$dir")' in script
    # The scripts refuse to start in an existing runs/<name>: the task never creates it (only removes a
    # failed attempt's before a fresh start).
    assert "mkdir" not in script.split("esac")[1]


def test_bad_slurm_input_without_a_cluster_exits_2(tmp_path):
    # No sbatch on PATH: nothing written, one line naming the fix.
    no_slurm = {**os.environ, "PATH": str(tmp_path / "empty")}
    proc = bench(
        "--suite", FIXTURES / "slurm_suite.toml", "--launcher", "slurm", "--out", "o", env=no_slurm, cwd=tmp_path
    )
    assert_one_line_exit_2(proc, "no sbatch on PATH")
    assert not (tmp_path / "o").exists()
    proc = bench(
        "--suite", FIXTURES / "slurm_suite.toml", "--partition", "p", "--out", "o", env=os.environ, cwd=tmp_path
    )
    assert_one_line_exit_2(proc, "--partition apply to --launcher slurm only")
    (tmp_path / "local").mkdir()
    spec = {"script": "dqn_cartpole.py", "env_id": "CartPole-v1", "seed": 1, "run_name": "r", "args": []}
    (tmp_path / "local" / "plan.json").write_text(json.dumps({"suite": "s", "workers": 1, "plan": [spec]}))
    proc = bench("--out", tmp_path / "local", "--wait", env=os.environ, cwd=tmp_path)
    assert_one_line_exit_2(proc, "holds no Slurm launch")


def test_task_records_say_why_slurm_ended_a_task(tmp_path):
    spec = {"script": "dqn_cartpole.py", "script_path": "x.py", "env_id": "CartPole-v1", "seed": 1, "args": []}
    specs = [{**spec, "run_name": f"r{i}"} for i in range(4)]
    jobs = {"runs": {f"r{i}": f"7_{i}" for i in range(3)}, "submissions": [{"job": "7", "time_min": 2}]}
    states = {"7_0": "TIMEOUT", "7_1": "PENDING"}  # 7_2: gone from the controller while 7 is still known
    (tmp_path / "harness").mkdir()
    # A record of an earlier submission's task is not this task's.
    (tmp_path / "harness" / "r2.json").write_text(json.dumps({"returncode": 0, "slurm_job": "5_0"}))
    reasons = [cluster.task_record(s, tmp_path, jobs, states)["reason"] for s in specs]
    assert reasons[0].startswith("Slurm TIMEOUT: cut by --time=2")
    assert reasons[1] == "not finished: Slurm PENDING (job 7_1); follow it with --wait"
    assert reasons[2] == "Slurm no longer lists task 7_2 of a known array: cancelled before it started"
    assert reasons[3].startswith("not submitted to Slurm")


# ---- on the cluster ----
def test_submission_returns_at_once_with_one_job_array(smoke_submission, slurm_env):
    out, proc, seconds = smoke_submission
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (submission,) = jobs_of(out)["submissions"]
    assert f"submitted 5 runs as Slurm job array {submission['job']} (0-4%2" in proc.stdout
    assert seconds < 30, seconds  # returns with the job id, runs nothing itself (measured: about 0.4 s)
    assert submission["job"] in squeue_jobs(slurm_env)
    script = (out / "slurm" / "submit-1.sh").read_text()
    assert "#SBATCH --time=3" in script  # the smoke suite's timeout_s 170
    for name in SMOKE_SCRIPTS:
        assert f" {ROOT / name} --env-id " in script, name


def test_crash_and_time_limit_fail_with_reasons_and_a_rerun_resubmits_only_those(slurm_env, tmp_path):
    suite = FIXTURES / "slurm_suite.toml"
    submit = ("--suite", suite, "--launcher", "slurm", "--out", tmp_path / "out")
    first = bench(*submit, env=slurm_env, cwd=tmp_path)
    assert first.returncode == 0 and "submitted 3 runs" in first.stdout, first.stdout + first.stderr
    (job,) = (s["job"] for s in jobs_of(tmp_path / "out")["submissions"])
    # The same command while the array is queued or running submits nothing.
    again = bench(*submit, env=slurm_env, cwd=tmp_path)
    assert again.returncode == 0 and "nothing to submit" in again.stdout, again.stdout + again.stderr
    assert len(jobs_of(tmp_path / "out")["submissions"]) == 1

    waited = bench("--out", tmp_path / "out", "--wait", "--poll-every", "1", env=slurm_env, cwd=tmp_path, timeout=240)
    assert waited.returncode == 1, waited.stdout + waited.stderr  # failed runs set the exit code, as locally
    runs = {r["seed"]: r for r in results_of(tmp_path / "out")["runs"]}
    assert runs[1]["status"] == "ok" and runs[1]["score"] == 410.0
    assert runs[2]["status"] == "failed" and runs[2]["reason"] == "exit code 1: RuntimeError: planted crash"
    assert runs[6]["status"] == "failed" and runs[6]["reason"].startswith("Slurm TIMEOUT: cut by --time=1")
    failed = (tmp_path / "out" / "report.md").read_text().split("## Failed runs")[1]
    assert "planted crash" in failed and "Slurm TIMEOUT" in failed
    assert "DUE TO TIME LIMIT" in (tmp_path / "out" / "logs" / "slurm" / f"{job}_2.out").read_text()

    # Rerun: only the two failed runs go to Slurm, as a second array; the finished one stays as it is.
    rerun = bench(*submit, env=slurm_env, cwd=tmp_path)
    assert rerun.returncode == 0 and "submitted 2 runs" in rerun.stdout and "1 finished ok" in rerun.stdout
    jobs = jobs_of(tmp_path / "out")
    second = jobs["submissions"][1]["job"]
    assert jobs["runs"]["CartPole-v1__dqn_cartpole__1"] == f"{job}_0"
    assert jobs["runs"]["CartPole-v1__dqn_cartpole__2"] == f"{second}_0"
    hang = jobs["runs"]["CartPole-v1__dqn_cartpole__6"]
    deadline = time.time() + 120
    while not squeue_state(hang, slurm_env).startswith("RUNNING"):
        assert time.time() < deadline, squeue_state(hang, slurm_env)
        time.sleep(0.5)
    subprocess.run(["scancel", hang], env=slurm_env, check=True)  # cancelled: a third way for Slurm to stop a run
    waited = bench("--out", tmp_path / "out", "--wait", "--poll-every", "1", env=slurm_env, cwd=tmp_path, timeout=120)
    assert waited.returncode == 1, waited.stdout + waited.stderr
    runs = {r["seed"]: r for r in results_of(tmp_path / "out")["runs"]}
    assert runs[1]["status"] == "ok" and runs[2]["reason"] == "exit code 1: RuntimeError: planted crash"
    assert runs[6]["reason"].startswith("Slurm CANCELLED"), runs[6]
    record = json.loads((tmp_path / "out" / "harness" / "CartPole-v1__dqn_cartpole__1.json").read_text())
    assert record["slurm_job"] == f"{job}_0"  # the finished run was not run again


def test_requeued_task_resumes_its_run_from_its_checkpoint(slurm_env, tmp_path):
    out = tmp_path / "out"
    proc = bench(
        "--suite", FIXTURES / "slurm_requeue_suite.toml", "--launcher", "slurm", "--requeue", "--out", out,
        env=slurm_env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (task,) = jobs_of(out)["runs"].values()
    checkpoint = out / "runs" / "CartPole-v1__dqn_cartpole__3" / "checkpoint"
    deadline = time.time() + 120
    while not checkpoint.is_file():
        assert time.time() < deadline, squeue_state(task, slurm_env)
        time.sleep(0.5)
    # A preemption as Slurm does it with PreemptMode=REQUEUE: SIGTERM, then the task back in the queue.
    subprocess.run(["scontrol", "requeue", task], env=slurm_env, check=True, capture_output=True)
    while not squeue_state(task, slurm_env).startswith("PENDING"):
        assert time.time() < deadline, squeue_state(task, slurm_env)
        time.sleep(0.5)
    # Slurm holds a requeued job for 2 minutes (its BeginTime); the test does not wait them out.
    subprocess.run(["scontrol", "update", f"jobid={task}", "StartTime=now"], env=slurm_env, check=True)
    waited = bench("--out", out, "--wait", "--poll-every", "1", env=slurm_env, cwd=tmp_path, timeout=180)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    (run,) = results_of(out)["runs"]
    assert run["status"] == "ok" and run["score"] == 390.0
    log = (out / "logs" / "CartPole-v1__dqn_cartpole__3.log").read_text()
    assert "--mode checkpoint" in log and f"--resume {out.resolve()}/runs/CartPole-v1__dqn_cartpole__3" in log
    assert "restart 1" in log
    assert json.loads((out / "harness" / "CartPole-v1__dqn_cartpole__3.json").read_text())["restarts"] == 1


def _comparable(results: dict) -> dict:
    """What must not depend on the launcher: everything but when, where and how it ran."""
    keep = {k: v for k, v in results.items() if k not in ("meta", "runs")}
    runs = [{k: v for k, v in r.items() if k not in ("duration_s", "log", "train_curve")} for r in results["runs"]]
    for run, r in zip(runs, results["runs"]):
        run["train_curve"] = [[step, value] for step, _wall_time, value in r["train_curve"]]
    return {**keep, "runs": runs}


def test_same_results_report_plots_and_regression_verdict_as_local(slurm_env, tmp_path):
    suite = FIXTURES / "fake_suite.toml"
    local = bench("--suite", suite, "--out", tmp_path / "local", env=slurm_env, cwd=tmp_path)
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr
    same = bench(
        "--suite", suite, "--launcher", "slurm", "--wait", "--out", tmp_path / "slurm", "--poll-every", "1",
        env=slurm_env, cwd=tmp_path, timeout=240,
    )  # fmt: skip
    assert same.returncode == 0, same.stdout[-3000:] + same.stderr
    a, b = results_of(tmp_path / "local"), results_of(tmp_path / "slurm")
    assert _comparable(a) == _comparable(b)
    assert "on Slurm (job " in (tmp_path / "slurm" / "report.md").read_text()
    body = [(tmp_path / d / "report.md").read_text().split("\n## ", 1)[1] for d in ("local", "slurm")]
    assert body[0] == body[1].replace(f"{tmp_path}/slurm", f"{tmp_path}/local")
    plots = [sorted(p.name for p in (tmp_path / d / "plots").glob("*.png")) for d in ("local", "slurm")]
    assert plots[0] == plots[1] and plots[0]
    # The regression check: the Slurm launch against the local one passes, a planted drop is flagged.
    compare = ("--compare", tmp_path / "local", "--poll-every", "1")
    check = bench("--report-only", "--out", tmp_path / "slurm", *compare, env=slurm_env, cwd=tmp_path)
    assert check.returncode == 0 and "1 compared, none flagged" in check.stdout, check.stdout[-3000:] + check.stderr
    assert json.loads((tmp_path / "slurm" / "results.json").read_text())["comparison"]["checks"][0]["flags"] == []
    drop = bench(
        "--suite", suite, "--launcher", "slurm", "--wait", "--out", tmp_path / "drop", *compare,
        "--extra-args", "--score-scale 0.8", env=slurm_env, cwd=tmp_path, timeout=240,
    )  # fmt: skip
    assert drop.returncode == 1 and "REGRESSION dqn_cartpole.py CartPole-v1: score dropped" in drop.stdout


def test_unknown_partition_and_refused_job_exit_2_and_submit_nothing(slurm_env, tmp_path):
    before = squeue_jobs(slurm_env)
    submit = ("--suite", FIXTURES / "slurm_suite.toml", "--launcher", "slurm", "--out", tmp_path / "o")
    proc = bench(*submit, "--partition", "nosuch", env=slurm_env, cwd=tmp_path)
    assert_one_line_exit_2(proc, "--partition nosuch: no such Slurm partition; sinfo lists ")
    # The node has no GPU, and not that much memory: sbatch refuses, and says why.
    proc = bench(*submit, "--gpus-per-run", "1", env=slurm_env, cwd=tmp_path)
    assert_one_line_exit_2(proc, "sbatch refused the job: Invalid generic resource (gres) specification")
    proc = bench(*submit, "--mem", "100000000M", env=slurm_env, cwd=tmp_path)
    assert_one_line_exit_2(proc, "sbatch refused the job: Memory specification can not be satisfied")
    # Nothing was queued: the controller keeps a record of the job it refused for its memory, never started.
    new = squeue_jobs(slurm_env) - before
    assert all(squeue_state(job, slurm_env) == "FAILED|BadConstraints" for job in new), new
    assert not (tmp_path / "o" / "slurm" / "jobs.json").exists() and not (tmp_path / "o" / "plan.json").exists()


def test_smoke_suite_through_slurm_writes_the_local_report(smoke_submission, slurm_env):
    out, proc, _ = smoke_submission
    assert proc.returncode == 0, proc.stdout + proc.stderr
    waited = bench("--out", out, "--wait", "--poll-every", "2", env=slurm_env, cwd=out.parent, timeout=600)
    assert waited.returncode == 0, waited.stdout[-4000:] + waited.stderr[-2000:]
    assert re.search(r"followed for \d+:\d\d:\d\d, \d+ state queries of \d+ ms each", waited.stdout)
    results = results_of(out)
    assert all(r["status"] == "ok" for r in results["runs"]), [r.get("reason") for r in results["runs"]]
    assert {r["script"] for r in results["rows"]} == SMOKE_SCRIPTS
    report = (out / "report.md").read_text()
    assert "on Slurm (job " in report
    for row in results["rows"]:
        assert row["reference"] is not None and row["sps"] > 0, row
        assert f"## {row['script']}" in report
    assert "none published" not in report and len(list((out / "plots").glob("*.png"))) >= 5
