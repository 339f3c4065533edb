"""Benchmark harness: run the scripts over envs and seeds, report against published scores.

    python benchmarks/run.py --suite smoke                  # every script, tiny budgets (CI, minutes)
    python benchmarks/run.py --suite quick --save-baseline  # ~1 h on 2 CPU cores; baselines/quick.json
    python benchmarks/run.py --suite quick --compare quick  # regression check against that baseline
    python benchmarks/run.py --suite full --dry-run         # list the runs and their commands
    python benchmarks/run.py --report-only --out DIR        # re-aggregate finished runs in DIR

Every run goes through the script's own CLI, in a subprocess whose working directory is the output
folder, so the script writes `DIR/runs/<run-name>/` (summary.json + TensorBoard events) as it
always does; its output goes to `DIR/logs/<run-name>.log`. Suites (`suites.toml`) and published
scores with their sources and protocols (`reference_scores.toml`) are data files next to this one.

The report (`DIR/report.md`, `DIR/results.json`, `DIR/plots/*.png`) has, per script and env:
the final-evaluation mean of each seed aggregated as mean and IQM (interquartile mean: the mean of
the middle 50% of runs, as scipy.stats.trim_mean(x, 0.25) and rliable compute it), each with a 95%
percentile-bootstrap CI over seeds; the human-normalized score on Atari, with its IQM over all
games and seeds under a stratified bootstrap (seeds resampled within each game; Agarwal et al.
2021, "Deep RL at the Edge of the Statistical Precipice"); steps/s; wall time; pass/fail.

A run that crashes, times out, writes no summary.json, or has NaN in its summary or scalars is a
failed run: it is listed with its reason and log, the report is still written, the exit code is 1.
`--compare` exits 1 when a score dropped significantly or steps/s fell more than 15% (see
`compare_results`). Exit code 2: bad harness input.
"""

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
SUITES_FILE = BENCH_DIR / "suites.toml"
REFERENCES_FILE = BENCH_DIR / "reference_scores.toml"
BASELINES_DIR = BENCH_DIR / "baselines"
CI_LEVEL = 0.95
BOOTSTRAP_REPS = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same runs always give the same report (an unchanged run passes --compare)
SPS_DROP_LIMIT = 0.15
RESULTS_VERSION = 1


def fail(message: str) -> None:
    """Bad harness input: one line naming the problem and the fix, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


# ==== Suites and references ====
def load_suites(path: Path = SUITES_FILE) -> dict:
    with open(path, "rb") as f:
        suites = tomllib.load(f)
    for name, suite in suites.items():
        suite["_dir"] = str(Path(path).resolve().parent)
        suite["name"] = name
    return suites


def load_references(path: Path = REFERENCES_FILE) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


ATARI_ID = re.compile(r"^(?:ALE/)?([A-Z][A-Za-z]*?)(?:NoFrameskip|Deterministic)?-v\d+$")
MINATAR_ID = re.compile(r"^([A-Za-z]+)-MinAtar$")


def env_family(env_id: str) -> tuple:
    """(family, key) under which reference tables list an env: ('atari', 'Breakout') for
    BreakoutNoFrameskip-v4 / ALE/Breakout-v5, ('minatar', 'Breakout') for Breakout-MinAtar, else
    ('gymnasium', env_id)."""
    m = MINATAR_ID.match(env_id)
    if m:
        return "minatar", m.group(1)
    m = ATARI_ID.match(env_id)
    if m and (env_id.startswith("ALE/") or "NoFrameskip" in env_id or "Deterministic" in env_id
              or m.group(1) in _ATARI_GAMES):
        return "atari", m.group(1)
    return "gymnasium", env_id


# Games the reference file knows; lets a bare "Pong-v5" count as Atari.
_ATARI_GAMES = {"Breakout", "Pong", "BeamRider", "Enduro", "Qbert", "Seaquest", "SpaceInvaders"}


def find_reference(references: dict, script: str, env_id: str):
    """The published score for this script on this env (dict with the table's source, protocol,
    budget and rule merged in), or None."""
    family, key = env_family(env_id)
    for table_id, table in references.get("tables", {}).items():
        if script in table.get("scripts", []) and table.get("family") == family and key in table["scores"]:
            entry = dict(table["scores"][key])
            meta = {k: v for k, v in table.items() if k != "scores"}
            return {**meta, **entry, "table": table_id, "key": key}
    return None


def find_normalizer(references: dict, env_id: str):
    """(random, human, normalizer table) for an Atari game, or None."""
    family, key = env_family(env_id)
    if family != "atari":
        return None
    table = references.get("normalizers", {}).get("atari", {})
    entry = table.get("scores", {}).get(key)
    if entry is None:
        return None
    return entry["random"], entry["human"], {k: v for k, v in table.items() if k != "scores"}


def script_stem(script: str) -> str:
    return Path(script).stem


def plan_runs(suite: dict, scripts=None, env_ids=None, seeds=None, extra_args=(), timeout_s=None) -> list:
    """The runs of a suite as a list of specs, after the --scripts / --env-ids / --seeds choices.

    --env-ids replaces the env list of every selected entry, but only with env ids of the same
    family as the entry's own (Atari ids go to Atari scripts, MinAtar ids to MinAtar scripts).
    """
    entries = suite.get("runs", [])
    if scripts:
        wanted = {s if s.endswith(".py") else s + ".py" for s in scripts}
        known = {e["script"] for e in entries}
        unknown = wanted - known
        if unknown:
            fail(f"--scripts {', '.join(sorted(unknown))} not in suite {suite['name']!r}; "
                 f"it has {', '.join(sorted(known))}")
        entries = [e for e in entries if e["script"] in wanted]
    plan = []
    for entry in entries:
        envs = entry["env_ids"]
        if env_ids:
            families = {env_family(e)[0] for e in envs}
            envs = [e for e in env_ids if env_family(e)[0] in families]
        script_path = Path(suite["_dir"]) / entry["path"] if "path" in entry else ROOT / entry["script"]
        for env_id in envs:
            for seed in (seeds or entry["seeds"]):
                plan.append({
                    "script": entry["script"], "script_path": str(script_path), "env_id": env_id,
                    "seed": int(seed), "total_timesteps": entry.get("total_timesteps"),
                    "args": [str(a) for a in entry.get("args", [])] + list(extra_args),
                    "run_name": f"{env_id.replace('/', '-')}__{script_stem(entry['script'])}__{seed}",
                    "judge": bool(entry.get("judge", suite.get("judge", False))),
                    "timeout_s": timeout_s or entry.get("timeout_s", suite.get("timeout_s")),
                })
    if not plan:
        fail(f"the choices leave no run in suite {suite['name']!r}; check --scripts / --env-ids "
             "(an env id only applies to scripts of its family: Atari, MinAtar, other)")
    return plan


def command_for(spec: dict) -> list:
    cmd = [sys.executable, spec["script_path"], "--env-id", spec["env_id"], "--seed", str(spec["seed"])]
    if spec.get("total_timesteps") is not None:
        cmd += ["--total-timesteps", str(spec["total_timesteps"])]
    return cmd + ["--run-name", spec["run_name"], *spec["args"]]


# ==== Statistics ====
def iqm(x, axis=-1):
    """Interquartile mean: drop the lowest and highest 25% (int(0.25 n) values each side), average the
    rest; same as scipy.stats.trim_mean(x, 0.25). With fewer than 4 values it is the mean."""
    x = np.sort(np.asarray(x, dtype=np.float64), axis=axis)
    n = x.shape[axis]
    k = int(0.25 * n)
    return np.take(x, np.arange(k, n - k), axis=axis).mean(axis=axis)


def _bootstrap_stats(samples_per_task, statistic, reps: int, rng) -> np.ndarray:
    """`reps` values of `statistic` on stratified resamples: each task's runs are resampled with
    replacement within the task, then pooled (with one task this is the ordinary bootstrap)."""
    pooled = []
    for x in samples_per_task:
        x = np.asarray(x, dtype=np.float64)
        pooled.append(x[rng.integers(0, len(x), size=(reps, len(x)))])
    return statistic(np.concatenate(pooled, axis=1), axis=1)


def bootstrap_ci(samples_per_task, statistic=iqm, reps: int = BOOTSTRAP_REPS, level: float = CI_LEVEL,
                 seed: int = BOOTSTRAP_SEED) -> tuple:
    """Percentile-bootstrap CI of `statistic` over runs, stratified by task (a list of per-task
    arrays of per-seed scores; pass one array for a single task)."""
    if isinstance(samples_per_task, np.ndarray) or np.isscalar(samples_per_task[0]):
        samples_per_task = [samples_per_task]
    stats = _bootstrap_stats(samples_per_task, statistic, reps, np.random.default_rng(seed))
    alpha = 1.0 - level
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap_diff_ci(new, base, statistic=iqm, reps: int = BOOTSTRAP_REPS, level: float = CI_LEVEL,
                      seed: int = BOOTSTRAP_SEED) -> tuple:
    """Percentile-bootstrap CI of statistic(new) - statistic(base), seeds of each resampled
    independently (the two sets of runs are unpaired: a code change gives a new trajectory)."""
    rng = np.random.default_rng(seed)
    diff = _bootstrap_stats([new], statistic, reps, rng) - _bootstrap_stats([base], statistic, reps, rng)
    alpha = 1.0 - level
    lo, hi = np.percentile(diff, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def human_normalized(score, random_score: float, human_score: float):
    """(score - random) / (human - random): 0 is random play, 1 is the human tester."""
    return (np.asarray(score, dtype=np.float64) - random_score) / (human_score - random_score)


# ==== Launching ====
TIME_LEFT = re.compile(r"(\d+):(\d\d):(\d\d) left")  # the scripts' Progress lines


def fmt_duration(seconds) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Launch:
    """One running subprocess: its output goes to the log, the last progress line is kept."""

    def __init__(self, spec: dict, out: Path, env: dict):
        self.spec, self.start = spec, time.time()
        self.log_path = out / "logs" / f"{spec['run_name']}.log"
        self.log = open(self.log_path, "w")
        self.log.write("$ " + shlex.join(command_for(spec)) + "\n")
        self.log.flush()
        self.left_s, self.timed_out = None, False
        # New session: a timeout or Ctrl-C ends the run's whole process group, nothing else.
        self.proc = subprocess.Popen(command_for(spec), cwd=out, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.log.write(line)
            m = TIME_LEFT.search(line)
            if m:
                h, mnt, s = map(int, m.groups())
                self.left_s = (3600 * h + 60 * mnt + s, time.time())
        self.log.flush()

    def elapsed(self) -> float:
        return time.time() - self.start

    def time_left(self):
        if self.left_s is None:
            return None
        left, at = self.left_s
        return max(left - (time.time() - at), 0.0)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, 9)
        except ProcessLookupError:
            pass

    def finish(self) -> dict:
        self.reader.join(timeout=10)
        self.log.close()
        return {"returncode": self.proc.returncode, "duration_s": self.elapsed(), "timed_out": self.timed_out,
                "log": str(self.log_path.relative_to(self.log_path.parents[1])),
                "command": shlex.join(command_for(self.spec))}


def child_env(workers: int) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    threads = max(1, (os.cpu_count() or 1) // workers)
    if workers > 1:
        # Runs side by side share the cores instead of each spawning one thread per core.
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env.setdefault(var, str(threads))
        if threads == 1 and "XLA_FLAGS" not in env:
            env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return env


def run_plan(plan: list, out: Path, workers: int, progress_every: float = 15.0) -> dict:
    """Runs every spec (at most `workers` at a time), printing progress; returns {run_name: record}."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "harness").mkdir(parents=True, exist_ok=True)
    env = child_env(workers)
    queue, running, records = list(plan), [], {}
    per_step_s = {}  # script -> seconds per step of its finished runs (for the time-left estimate)
    start, last_print, failed = time.time(), 0.0, 0

    def estimate_left() -> str:
        total, unknown = 0.0, 0
        for launch in running:
            left = launch.time_left()
            rate = per_step_s.get(launch.spec["script"])
            if left is None and rate is not None and launch.spec.get("total_timesteps") is not None:
                left = max(rate * launch.spec["total_timesteps"] - launch.elapsed(), 0.0)
            if left is None:
                unknown += 1
            else:
                total += left
        for spec in queue:
            rate = per_step_s.get(spec["script"])
            if rate is None or spec.get("total_timesteps") is None:
                unknown += 1
            else:
                total += rate * spec["total_timesteps"]
        if unknown and not total:
            return "time left: not yet known"
        text = fmt_duration(total / max(1, min(workers, len(running) + len(queue))))
        return f"~{text}{'+' if unknown else ''} left" + (f" ({unknown} runs not yet estimated)" if unknown else "")

    def status_line() -> str:
        done = len(records)
        now = [f"{l.spec['run_name']} {fmt_duration(l.elapsed())}" for l in running]
        return (f"[bench {fmt_duration(time.time() - start)}] {done}/{len(plan)} done, {failed} failed, "
                f"{len(running)} running, {len(queue)} queued | {estimate_left()}"
                + (f" | running: {', '.join(now)}" if now else ""))

    try:
        while queue or running:
            while queue and len(running) < workers:
                spec = queue.pop(0)
                run_dir = out / "runs" / spec["run_name"]
                if run_dir.exists():  # a stale summary from an earlier run must not count for this one
                    shutil.rmtree(run_dir)
                if not Path(spec["script_path"]).is_file():
                    records[spec["run_name"]] = {"returncode": None, "duration_s": 0.0, "timed_out": False,
                                                 "missing_script": True, "log": None,
                                                 "command": shlex.join(command_for(spec))}
                    (out / "harness" / f"{spec['run_name']}.json").write_text(json.dumps(records[spec["run_name"]]))
                    failed += 1
                    print(f"[bench] FAILED {spec['run_name']}: script {spec['script_path']} not found", flush=True)
                    continue
                running.append(Launch(spec, out, env))
                print(f"[bench] start {spec['run_name']}", flush=True)
            time.sleep(0.2)
            for launch in list(running):
                timeout = launch.spec.get("timeout_s")
                if launch.proc.poll() is None and timeout and launch.elapsed() > timeout:
                    launch.timed_out = True
                    launch.kill()
                    launch.proc.wait()
                if launch.proc.poll() is None:
                    continue
                running.remove(launch)
                record = launch.finish()
                records[launch.spec["run_name"]] = record
                (out / "harness" / f"{launch.spec['run_name']}.json").write_text(json.dumps(record, indent=2))
                result = collect_run(launch.spec, out, record)
                if result["status"] == "ok":
                    steps = result["total_timesteps"]
                    if steps:
                        per_step_s[launch.spec["script"]] = record["duration_s"] / steps
                    print(f"[bench] done {launch.spec['run_name']} in {record['duration_s']:.0f} s: "
                          f"score {result['score']:.2f}, {result['sps']:,.0f} steps/s", flush=True)
                else:
                    failed += 1
                    print(f"[bench] FAILED {launch.spec['run_name']}: {result['reason']} (log: {record['log']})",
                          flush=True)
                last_print = 0.0
            if time.time() - last_print >= progress_every and (queue or running):
                print(status_line(), flush=True)
                last_print = time.time()
    except KeyboardInterrupt:
        print("[bench] interrupted: stopping the running scripts, writing the report of what finished",
              flush=True)
        for launch in running:
            launch.kill()
            launch.proc.wait()
            records[launch.spec["run_name"]] = {**launch.finish(), "interrupted": True}
        for spec in queue:
            records[spec["run_name"]] = {"returncode": None, "duration_s": 0.0, "timed_out": False,
                                         "interrupted": True, "log": None, "command": shlex.join(command_for(spec))}
        records["__interrupted__"] = True
    print(f"[bench] all {len(plan)} runs finished in {fmt_duration(time.time() - start)}, {failed} failed", flush=True)
    return records


# ==== Collecting ====
def read_scalars(run_dir) -> dict:
    """All TensorBoard scalars of a run directory as {tag: [(step, wall_time, value), ...]}.

    torch's SummaryWriter stores scalars as `scalars`; tensorboard.summary.Writer (the JAX scripts)
    stores them as scalar `tensors` with the scalars plugin, which EventAccumulator lists apart.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {tag: [(e.step, e.wall_time, e.value) for e in acc.Scalars(tag)] for tag in tags["scalars"]}
    for tag in tags.get("tensors", []):
        if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
            continue
        scalars[tag] = [(e.step, e.wall_time, float(tensor_util.make_ndarray(e.tensor_proto).item()))
                        for e in acc.Tensors(tag)]
    return scalars


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _downsample(points: list, n: int = 200) -> list:
    if len(points) <= n:
        return points
    idx = np.linspace(0, len(points) - 1, n).round().astype(int)
    return [points[i] for i in idx]


def collect_run(spec: dict, out: Path, record) -> dict:
    """A run's result: status 'ok' with its numbers, or 'failed' with the reason."""
    result = {k: spec.get(k) for k in ("run_name", "script", "env_id", "seed", "judge")}
    result.update(status="failed", reason=None, score=None, sps=None, wall_time_s=None, eval_history=[],
                  train_curve=[], total_timesteps=spec.get("total_timesteps"),
                  log=record.get("log") if record else None, returncode=record.get("returncode") if record else None)
    run_dir = out / "runs" / spec["run_name"]

    def failed(reason: str) -> dict:
        result["reason"] = reason
        return result

    if record is not None:
        if record.get("missing_script"):
            return failed(f"script not found: {spec.get('script_path')}")
        if record.get("interrupted"):
            return failed("interrupted (Ctrl-C) before it finished")
        if record.get("timed_out"):
            return failed(f"timed out after {spec.get('timeout_s')} s")
        if record.get("returncode") != 0:
            return failed(f"exit code {record.get('returncode')}: {last_log_line(out, record)}")
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        return failed("no summary.json written")
    try:
        summary = json.loads(summary_path.read_text())
    except ValueError as e:  # json.loads accepts NaN; this is a truncated or corrupt file
        return failed(f"summary.json unreadable ({e})")
    missing = {"final_eval", "sps", "wall_time_s", "total_timesteps"} - summary.keys()
    if missing:
        return failed(f"summary.json lacks {', '.join(sorted(missing))}")
    if summary.get("env_id", spec["env_id"]) != spec["env_id"] or summary.get("seed", spec["seed"]) != spec["seed"]:
        return failed(f"summary.json is for {summary.get('env_id')} seed {summary.get('seed')}, not this run")
    fe = summary["final_eval"]
    for key in ("mean", "min", "max", "std"):
        if key in fe and not _finite(fe[key]):
            return failed(f"NaN/inf in summary final_eval.{key}")
    if not _finite(fe.get("mean")):
        return failed("summary final_eval has no mean")
    for key in ("sps", "wall_time_s"):
        if not _finite(summary[key]):
            return failed(f"NaN/inf in summary {key}")
    history = [p for p in summary.get("eval_history", []) if isinstance(p, dict)]
    if any(not _finite(p.get("mean")) for p in history):
        return failed("NaN in summary eval_history")
    try:
        scalars = read_scalars(run_dir)
    except Exception as e:  # noqa: BLE001 - any unreadable event file is a broken run
        return failed(f"TensorBoard events unreadable ({type(e).__name__}: {e})")
    nan_tags = sorted(tag for tag, pts in scalars.items() if any(math.isnan(v) for _, _, v in pts))
    if nan_tags:
        return failed(f"NaN in TensorBoard scalars {', '.join(nan_tags)}")
    train = scalars.get("charts/episodic_return", [])
    # Wall time from the run's first event of any tag, the closest the events get to its start.
    t0 = min((pts[0][1] for pts in scalars.values() if pts), default=None)
    result.update(
        status="ok", score=float(fe["mean"]), final_eval=fe, sps=float(summary["sps"]),
        wall_time_s=float(summary["wall_time_s"]), total_timesteps=int(summary["total_timesteps"]),
        device=summary.get("device"), versions=summary.get("versions"),
        eval_history=[{"step": p.get("step"), "wall_time_s": p.get("wall_time_s"), "mean": p["mean"]} for p in history],
        train_curve=_downsample([[s, w - t0, v] for s, w, v in train]),
    )
    return result


def last_log_line(out: Path, record: dict) -> str:
    if not record.get("log"):
        return ""
    try:
        lines = [line.strip() for line in (out / record["log"]).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    # The exception line, not what follows it (JAX appends a note on traceback filtering).
    errors = [line for line in lines if EXCEPTION_LINE.match(line)]
    return (errors or lines or [""])[-1][:300]


EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b|error:|Killed)")


# ==== Aggregation ====
def aggregate(runs: list, references: dict) -> dict:
    """Per-(script, env) rows and per-script Atari HNS aggregates from the run results."""
    rows, groups = [], {}
    for r in runs:
        groups.setdefault((r["script"], r["env_id"]), []).append(r)
    for (script, env_id), group in groups.items():
        ok = sorted((r for r in group if r["status"] == "ok"), key=lambda r: r["seed"])
        row = {"script": script, "env_id": env_id, "family": env_family(env_id)[0],
               "seeds_planned": sorted(r["seed"] for r in group), "seeds": [r["seed"] for r in ok],
               "scores": [r["score"] for r in ok], "failed": len(group) - len(ok),
               "judge": any(r.get("judge") for r in group),
               "reference": find_reference(references, script, env_id)}
        budgets = sorted({r["total_timesteps"] for r in ok})
        row["budget"] = budgets[0] if len(budgets) == 1 else budgets or None
        if ok:
            scores = np.array(row["scores"])
            row.update(mean=float(scores.mean()), mean_ci=bootstrap_ci(scores, np.mean),
                       iqm=float(iqm(scores)), iqm_ci=bootstrap_ci(scores, iqm),
                       sps=float(np.mean([r["sps"] for r in ok])),
                       sps_all=[r["sps"] for r in ok],
                       wall_time_s=float(np.mean([r["wall_time_s"] for r in ok])))
            norm = find_normalizer(references, env_id)
            if norm is not None:
                rnd, hum, _ = norm
                hns = human_normalized(scores, rnd, hum)
                row["hns"] = {"scores": hns.tolist(), "iqm": float(iqm(hns)), "iqm_ci": bootstrap_ci(hns, iqm)}
                if row["reference"] is not None:
                    row["hns"]["reference"] = float(human_normalized(row["reference"]["score"], rnd, hum))
        row["verdict"] = verdict(row)
        rows.append(row)
    rows.sort(key=lambda r: (r["script"], r["env_id"]))
    aggregates = []
    for script in sorted({r["script"] for r in rows}):
        per_game = [np.array(r["hns"]["scores"]) for r in rows if r["script"] == script and "hns" in r]
        if per_game:
            aggregates.append({"script": script, "metric": "IQM of human-normalized score over games x seeds",
                               "games": len(per_game), "runs": int(sum(len(g) for g in per_game)),
                               "value": float(iqm(np.concatenate(per_game))),
                               "ci": bootstrap_ci(per_game, iqm)})
    return {"rows": rows, "aggregates": aggregates}


def verdict(row: dict) -> str:
    ref = row["reference"]
    if not row["seeds"]:
        return f"FAILED ({row['failed']}/{len(row['seeds_planned'])} runs)"
    prefix = f"FAILED {row['failed']}/{len(row['seeds_planned'])} runs; " if row["failed"] else ""
    if ref is None:
        return prefix + "no reference"
    if not row["judge"]:
        if ref.get("budget_steps") and isinstance(row["budget"], int) and row["budget"] < ref["budget_steps"]:
            return prefix + f"not judged (budget {fmt_steps(row['budget'])} < {fmt_steps(ref['budget_steps'])})"
        return prefix + "not judged"
    if ref["rule"] == "threshold":
        passed = row["iqm"] >= ref["score"]
    else:
        passed = row["iqm_ci"][1] >= ref["score"]
    budget_note = ""
    if ref.get("budget_steps") and isinstance(row["budget"], int) and row["budget"] < ref["budget_steps"]:
        budget_note = f" (budget {fmt_steps(row['budget'])} < {fmt_steps(ref['budget_steps'])})"
    return prefix + ("pass" if passed else "fail") + budget_note


def fmt_steps(n) -> str:
    if n is None:
        return "default"
    if isinstance(n, list):
        return "/".join(fmt_steps(x) for x in n)
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


# ==== Regression check ====
def compare_results(current: dict, baseline: dict) -> list:
    """One entry per (script, env) of the baseline.

    Score: flagged when the 95% percentile-bootstrap CI of IQM(this run) - IQM(baseline), seeds of
    each resampled independently, lies entirely below 0 (its upper end < 0). An unchanged run gives
    a difference distribution centred on 0, so it passes; a drop is caught when it is large against
    the seed-to-seed spread: a uniform 20% drop is caught whenever the two bootstrap spreads together
    are narrower than 20% of the score (tests/test_benchmarks.py plants one).
    Steps/s: flagged when the mean over seeds is more than 15% below the baseline's.
    Rows run at a different budget are reported as not comparable, not compared.
    """
    now = {(r["script"], r["env_id"]): r for r in current["rows"]}
    checks = []
    for base in baseline["rows"]:
        key = (base["script"], base["env_id"])
        check = {"script": key[0], "env_id": key[1], "flags": [], "note": ""}
        checks.append(check)
        row = now.get(key)
        if row is None:
            check["note"] = "not run"
            continue
        if not base.get("scores"):
            check["note"] = "baseline has no successful run"
            continue
        if not row["scores"]:
            check["flags"].append("no successful run")
            continue
        if row["budget"] != base["budget"]:
            check["note"] = f"not comparable: budget {fmt_steps(row['budget'])} vs baseline {fmt_steps(base['budget'])}"
            continue
        lo, hi = bootstrap_diff_ci(row["scores"], base["scores"])
        check.update(compared=True, iqm=row["iqm"], iqm_ci=row["iqm_ci"], base_iqm=base["iqm"],
                     base_iqm_ci=base["iqm_ci"], diff_ci=(lo, hi), sps=row["sps"], base_sps=base["sps"],
                     sps_change=row["sps"] / base["sps"] - 1.0)
        if hi < 0:
            check["flags"].append("score dropped")
        if row["sps"] < (1.0 - SPS_DROP_LIMIT) * base["sps"]:
            check["flags"].append(f"steps/s {100 * check['sps_change']:+.0f}%")
    return checks


def resolve_baseline(value: str) -> Path:
    path = Path(value)
    if path.is_dir():
        path = path / "results.json"
    elif not path.exists() and (BASELINES_DIR / f"{value}.json").is_file():
        path = BASELINES_DIR / f"{value}.json"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(BASELINES_DIR.glob("*.json"))) or "none yet"
        fail(f"--compare {value}: no such baseline (a results.json, a report folder, or a name in "
             f"benchmarks/baselines/: {known})")
    return path


# ==== Report ====
def _ci(value, ci, digits=1) -> str:
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _digits(row) -> int:
    scale = max(abs(s) for s in row["scores"]) if row["scores"] else 0
    return 0 if scale >= 1000 else 1 if scale >= 10 else 2


def write_plots(out: Path, results: dict) -> dict:
    """Learning curves over steps and over wall time per (script, env), with the reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "plots").mkdir(exist_ok=True)
    paths = {}
    for row in results["rows"]:
        runs = [r for r in results["runs"] if r["script"] == row["script"] and r["env_id"] == row["env_id"]
                and r["status"] == "ok"]
        if not runs:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for i, r in enumerate(sorted(runs, key=lambda r: r["seed"])):
            color = f"C{i % 10}"
            hist = [p for p in r["eval_history"] if p.get("step") is not None]
            if r["train_curve"]:
                steps, walls, values = zip(*r["train_curve"])
                axes[0].plot(steps, values, color=color, alpha=0.25, lw=0.8)
                axes[1].plot(walls, values, color=color, alpha=0.25, lw=0.8)
            if hist:
                axes[0].plot([p["step"] for p in hist], [p["mean"] for p in hist], "o-", color=color,
                             ms=3, label=f"seed {r['seed']} eval")
                axes[1].plot([p["wall_time_s"] for p in hist], [p["mean"] for p in hist], "o-", color=color, ms=3)
        ref = row["reference"]
        for ax in axes:
            if ref is not None:
                ax.axhline(ref["score"], color="k", ls="--", lw=1,
                           label=f"{ref['name']} {ref['score']:g}" + (f" ({ref['budget_note']})" if ref.get("budget_note") else ""))
            ax.grid(alpha=0.3)
            ax.set_ylabel("episodic return")
        axes[0].set_xlabel("environment steps")
        axes[1].set_xlabel("wall time (s)")
        axes[0].legend(fontsize=7, loc="best")
        fig.suptitle(f"{row['script']} on {row['env_id']} (eval: markers; training episodes: faint)", fontsize=10)
        fig.tight_layout()
        name = f"plots/{script_stem(row['script'])}__{row['env_id'].replace('/', '-')}.png"
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        paths[(row["script"], row["env_id"])] = name
    return paths


def render_report(results: dict, plots: dict, comparison=None) -> str:
    meta = results["meta"]
    rows, runs = results["rows"], results["runs"]
    n_failed = sum(r["status"] != "ok" for r in runs)
    lines = [f"# Benchmark report: suite `{meta['suite']}`", "",
             f"- created {meta['created']} on {meta['host']}; {meta['workers']} worker(s); "
             f"git {meta.get('git') or 'n/a'}",
             f"- command: `{meta['command']}`",
             *([f"- **planted drop**: every score lowered by {100 * meta['planted_drop']:g}% of its magnitude "
                "(--plant-drop), to test the regression check; these are not measured scores"]
               if meta.get("planted_drop") else []),
             f"- {len(runs)} runs: {len(runs) - n_failed} ok, {n_failed} failed"
             + (f"; regression check against `{comparison['baseline']}`: "
                f"{sum(bool(c['flags']) for c in comparison['checks'])} flagged" if comparison else ""),
             "", "Score = mean return of each run's final evaluation (summary.json `final_eval.mean`); "
             "mean and IQM over seeds with 95% percentile-bootstrap CIs (see Method). "
             "Reference numbers: see References.", ""]
    ref_ids = {}
    for row in rows:
        if row["reference"] is not None:
            ref_ids.setdefault(row["reference"]["table"], len(ref_ids) + 1)
    for script in sorted({r["script"] for r in rows}):
        srows = [r for r in rows if r["script"] == script]
        atari = any(r["family"] == "atari" for r in srows)
        lines += [f"## {script}", ""]
        head = ["env", "seeds ok", "budget (steps)", "mean [95% CI]", "IQM [95% CI]", "reference"]
        head += ["HNS IQM [95% CI] (reference)"] if atari else []
        head += ["steps/s", "wall time", "pass/fail"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in srows:
            ref = row["reference"]
            if ref is None:
                ref_text = "none published"
            else:
                ref_text = f"{ref['score']:g}" + (f" ± {ref['std']:g}" if "std" in ref else "")
                ref_text += f" ({ref['name']}" + (f", {ref['budget_note']}" if ref.get("budget_note") else "")
                ref_text += f") [{ref_ids[ref['table']]}]"
            seeds = f"{len(row['seeds'])}/{len(row['seeds_planned'])}"
            if row["seeds"]:
                d = _digits(row)
                cells = [row["env_id"], seeds, fmt_steps(row["budget"]), _ci(row["mean"], row["mean_ci"], d),
                         _ci(row["iqm"], row["iqm_ci"], d), ref_text]
                if atari:
                    h = row.get("hns")
                    cells.append(_ci(h["iqm"], h["iqm_ci"], 2) + (f" ({h['reference']:.2f})" if "reference" in h else "")
                                 if h else "—")
                cells += [f"{row['sps']:,.0f}", fmt_duration(row["wall_time_s"]), row["verdict"]]
            else:
                cells = [row["env_id"], seeds, "—", "—", "—", ref_text] + (["—"] if atari else []) + ["—", "—", row["verdict"]]
            lines.append("| " + " | ".join(cells) + " |")
        for agg in results["aggregates"]:
            if agg["script"] == script:
                lines += ["", f"All games: {agg['metric']}: **{_ci(agg['value'], agg['ci'], 2)}** "
                              f"({agg['games']} games, {agg['runs']} runs, stratified bootstrap)."]
        lines.append("")
        for row in srows:
            if (script, row["env_id"]) in plots:
                lines += [f"![{script} {row['env_id']}]({plots[(script, row['env_id'])]})", ""]
    failed = [r for r in runs if r["status"] != "ok"]
    if failed:
        lines += ["## Failed runs", "", "| run | script | env | seed | reason | log |", "|---|---|---|---|---|---|"]
        for r in failed:
            lines.append(f"| {r['run_name']} | {r['script']} | {r['env_id']} | {r['seed']} | "
                         f"{str(r['reason']).replace('|', '/')} | {r.get('log') or '—'} |")
        lines.append("")
    if comparison:
        lines += [f"## Regression check against `{comparison['baseline']}`", "",
                  "Flagged: the 95% bootstrap CI of IQM(this) − IQM(baseline) lies entirely below 0, or "
                  f"steps/s more than {100 * SPS_DROP_LIMIT:.0f}% below the baseline's.", "",
                  "| script | env | baseline IQM [CI] | this IQM [CI] | Δ IQM 95% CI | baseline steps/s | steps/s (change) | result |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in comparison["checks"]:
            if c.get("compared"):
                lines.append(f"| {c['script']} | {c['env_id']} | {_ci(c['base_iqm'], c['base_iqm_ci'], 2)} | "
                             f"{_ci(c['iqm'], c['iqm_ci'], 2)} | [{c['diff_ci'][0]:.2f}, {c['diff_ci'][1]:.2f}] | "
                             f"{c['base_sps']:,.0f} | {c['sps']:,.0f} ({100 * c['sps_change']:+.0f}%) | "
                             f"{'FLAGGED: ' + ', '.join(c['flags']) if c['flags'] else 'ok'} |")
            else:
                result = "FLAGGED: " + ", ".join(c["flags"]) if c["flags"] else c["note"]
                lines.append(f"| {c['script']} | {c['env_id']} | — | — | — | — | — | {result} |")
        lines.append("")
    if ref_ids:
        lines += ["## References", ""]
        tables = {r["reference"]["table"]: r["reference"] for r in rows if r["reference"] is not None}
        for table_id, n in sorted(ref_ids.items(), key=lambda kv: kv[1]):
            ref = tables[table_id]
            lines.append(f"{n}. **{ref['name']}**: {ref['source'].rstrip('.')}. Protocol: {ref['protocol'].rstrip('.')}. "
                         f"Pass rule: {RULES[ref['rule']]}.")
        if any("hns" in r for r in rows):
            norm = results.get("normalizer") or {}
            lines.append(f"{len(ref_ids) + 1}. **Human-normalized score** (HNS) = (score − random) / (human − random) "
                         f"with random and human from {norm.get('source', '?')}. Protocol: {norm.get('protocol', '?')}.")
        lines.append("")
    lines += ["## Method", "",
              "- Each run's score is its own final evaluation (episodes and policy as the script's "
              "summary.json `final_eval` and `args` say); the reference protocols above can differ "
              "(e.g. epsilon, no-op starts, or training-episode returns), so a pass/fail is a sanity "
              "check, not a replication claim.",
              "- IQM: mean of the runs left after dropping int(n/4) lowest and highest (scipy "
              "`trim_mean(x, 0.25)`, as rliable); with fewer than 4 seeds it equals the mean.",
              f"- 95% CIs: percentile bootstrap over seeds, {BOOTSTRAP_REPS:,} resamples, fixed bootstrap "
              "seed; the all-games HNS CI resamples seeds within each game (stratified). With few seeds "
              "the CIs are narrow and optimistic (one seed gives a zero-width CI).",
              "- A run failed if it exited non-zero, timed out, wrote no or an incomplete summary.json, "
              "or had NaN in its summary or TensorBoard scalars.",
              "- Entries not judged (small budgets) print the reference for context only.", ""]
    return "\n".join(lines)


RULES = {"threshold": "IQM over seeds ≥ the published number",
         "ci_reaches": "upper end of the IQM's 95% CI ≥ the published number (not significantly below it)"}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    if out.returncode != 0:
        return ""
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def build_results(plan: list, records: dict, out: Path, references: dict, meta: dict, plant_drop: float = 0.0) -> dict:
    runs = [collect_run(spec, out, records.get(spec["run_name"]) if records is not None else None) for spec in plan]
    for r in runs:
        if r["status"] == "ok" and plant_drop:
            # A drop is a decrease whatever the sign of the score (Pong's are negative early on).
            r["score"] -= plant_drop * abs(r["score"])
    results = {"version": RESULTS_VERSION, "meta": meta, "runs": runs, **aggregate(runs, references)}
    norm = references.get("normalizers", {}).get("atari")
    if norm:
        results["normalizer"] = {k: v for k, v in norm.items() if k != "scores"}
    return results


def plan_from_folder(out: Path) -> list:
    """The plan of an earlier launch (plan.json), or one spec per runs/*/summary.json found."""
    if (out / "plan.json").is_file():
        return json.loads((out / "plan.json").read_text())["plan"]
    plan = []
    for path in sorted((out / "runs").glob("*/summary.json")):
        try:
            s = json.loads(path.read_text())
        except ValueError:
            s = {}
        plan.append({"script": s.get("script", "?"), "script_path": "", "env_id": s.get("env_id", "?"),
                     "seed": s.get("seed"), "total_timesteps": s.get("total_timesteps"), "args": [],
                     "run_name": path.parent.name, "judge": True, "timeout_s": None})
    return plan


def load_records(out: Path) -> dict:
    records = {}
    for path in (out / "harness").glob("*.json"):
        records[path.stem] = json.loads(path.read_text())
    return records


# ==== Main ====
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--suite", default="smoke",
                   help="suite name in benchmarks/suites.toml (smoke, quick, full) or path to a suites .toml file "
                        "whose first suite is used")
    p.add_argument("--scripts", nargs="+", help="only these scripts of the suite (e.g. dqn_cartpole.py)")
    p.add_argument("--env-ids", nargs="+", help="run the selected scripts on these env ids instead of the suite's "
                                                 "(each id goes to the scripts of its family: Atari, MinAtar, other)")
    p.add_argument("--seeds", nargs="+", type=int, help="these seeds instead of the suite's")
    p.add_argument("--workers", type=int, help="runs at a time (default: the suite's; 1 gives the cleanest steps/s, "
                                                "2 finishes sooner on 2 cores)")
    p.add_argument("--out", help="output folder (default: benchmarks/out/<suite>)")
    p.add_argument("--compare", metavar="BASELINE",
                   help="results.json, report folder, or name in benchmarks/baselines/ to check for regressions")
    p.add_argument("--save-baseline", nargs="?", const="", metavar="NAME",
                   help="store this run's results.json as benchmarks/baselines/NAME.json (default NAME: the suite)")
    p.add_argument("--timeout", type=float, help="seconds per run before it is stopped and failed (default: the suite's)")
    p.add_argument("--extra-args", default="", help="flags appended to every script command, e.g. \"--no-cuda\"")
    p.add_argument("--report-only", action="store_true", help="launch nothing: rebuild the report from --out")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their commands, launch nothing")
    p.add_argument("--plant-drop", type=float, default=0.0, metavar="FRACTION",
                   help="lower every score by FRACTION of its magnitude before aggregating (with --report-only "
                        "--compare: shows whether the baseline's spread lets the check catch such a drop)")
    p.add_argument("--progress-every", type=float, default=15.0, help="seconds between progress lines")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    references = load_references()
    suite_path = Path(args.suite)
    if args.suite.endswith(".toml"):
        if not suite_path.is_file():
            fail(f"--suite {args.suite}: file not found")
        suites = load_suites(suite_path)
        suite = next(iter(suites.values()))
    else:
        suites = load_suites()
        if args.suite not in suites:
            fail(f"unknown --suite {args.suite!r}; choose one of {', '.join(suites)} or pass a .toml file")
        suite = suites[args.suite]
    if args.workers is not None and args.workers < 1:
        fail("--workers must be at least 1")
    workers = args.workers or int(suite.get("workers", 1))
    out = Path(args.out) if args.out else BENCH_DIR / "out" / suite["name"]
    baseline_path = resolve_baseline(args.compare) if args.compare else None

    if args.report_only:
        if not out.is_dir():
            fail(f"--report-only: {out} does not exist; pass the --out folder of an earlier launch")
        plan = plan_from_folder(out)
        if not plan:
            fail(f"--report-only: no plan.json and no runs/*/summary.json in {out}")
        records = load_records(out) if (out / "harness").is_dir() else None
        launched = json.loads((out / "plan.json").read_text()) if (out / "plan.json").is_file() else {}
        suite_name = launched.get("suite", "(folder)")
        workers = launched.get("workers", workers)
    else:
        plan = plan_runs(suite, args.scripts, args.env_ids, args.seeds, shlex.split(args.extra_args), args.timeout)
        if args.dry_run:
            for spec in plan:
                print(shlex.join(command_for(spec)))
            print(f"{len(plan)} runs, {workers} worker(s), output in {out}")
            return 0
        out.mkdir(parents=True, exist_ok=True)
        (out / "plan.json").write_text(json.dumps({"suite": suite["name"], "workers": workers, "plan": plan}, indent=2))
        print(f"[bench] suite {suite['name']}: {len(plan)} runs, {workers} worker(s), output in {out}", flush=True)
        records = run_plan(plan, out, workers, args.progress_every)
        suite_name = suite["name"]

    interrupted = bool(records and records.pop("__interrupted__", False))
    meta = {"suite": suite_name, "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "host": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()})",
            "workers": workers, "git": git_commit(),
            "command": shlex.join(["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None, "planted_drop": args.plant_drop}
    results = build_results(plan, records, out, references, meta, args.plant_drop)
    comparison = None
    if baseline_path is not None:
        baseline = json.loads(baseline_path.read_text())
        comparison = {"baseline": str(baseline_path), "checks": compare_results(results, baseline)}
        results["comparison"] = comparison
        if baseline.get("meta", {}).get("workers") not in (None, workers):
            print(f"[bench] warning: baseline ran with {baseline['meta']['workers']} worker(s), this with {workers}: "
                  "steps/s are not comparable", flush=True)
    plots = write_plots(out, results)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "report.md").write_text(render_report(results, plots, comparison))

    n_failed = sum(r["status"] != "ok" for r in results["runs"])
    flagged = [c for c in (comparison or {}).get("checks", []) if c["flags"]]
    compared = sum(bool(c.get("compared")) for c in (comparison or {}).get("checks", []))
    print(f"[bench] report: {out / 'report.md'}", flush=True)
    for row in results["rows"]:
        if row["seeds"]:
            print(f"[bench]   {row['script']} {row['env_id']}: IQM {_ci(row['iqm'], row['iqm_ci'], 2)} over "
                  f"{len(row['seeds'])} seeds, {row['sps']:,.0f} steps/s, {row['verdict']}", flush=True)
        else:
            print(f"[bench]   {row['script']} {row['env_id']}: {row['verdict']}", flush=True)
    code = 0
    if n_failed:
        print(f"[bench] {n_failed} of {len(results['runs'])} runs failed (see the report's 'Failed runs')", flush=True)
        code = 1
    if comparison is not None:
        for c in flagged:
            print(f"[bench] REGRESSION {c['script']} {c['env_id']}: {', '.join(c['flags'])}", flush=True)
        if compared == 0:
            print("[bench] regression check compared nothing (no common script/env at the same budget)", flush=True)
            code = 1
        elif flagged:
            code = 1
        else:
            print(f"[bench] regression check: {compared} compared, none flagged", flush=True)
    if args.save_baseline is not None:
        if n_failed or interrupted:
            print("[bench] not saving a baseline: some runs failed", flush=True)
            code = 1
        else:
            BASELINES_DIR.mkdir(exist_ok=True)
            target = BASELINES_DIR / f"{args.save_baseline or suite_name}.json"
            shutil.copyfile(out / "results.json", target)
            print(f"[bench] baseline saved to {target}", flush=True)
    if interrupted:
        code = 130
    return code


if __name__ == "__main__":
    sys.exit(main())
