"""Launching a plan: each run is the script's own CLI in a subprocess (at most `workers` at a time),
its output in logs/<run-name>.log, its harness record in harness/<run-name>.json; progress lines
with an estimate of the time left."""

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from results import collect_run

TIME_LEFT = re.compile(r"(\d+):(\d\d):(\d\d) left")  # the scripts' Progress lines


def command_for(spec: dict) -> list:
    cmd = [sys.executable, spec["script_path"], "--env-id", spec["env_id"], "--seed", str(spec["seed"])]
    if spec.get("total_timesteps") is not None:
        cmd += ["--total-timesteps", str(spec["total_timesteps"])]
    return cmd + ["--run-name", spec["run_name"], *spec["args"]]


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
        self.proc = subprocess.Popen(
            command_for(spec),
            cwd=out,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
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
        return {
            "returncode": self.proc.returncode,
            "duration_s": self.elapsed(),
            "timed_out": self.timed_out,
            "log": str(self.log_path.relative_to(self.log_path.parents[1])),
            "command": shlex.join(command_for(self.spec)),
        }


RUN_ENV = {"PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}


def thread_env(threads: int) -> dict:
    """The variables that hold a run's numeric libraries to `threads` threads (a user's own values win)."""
    env = {var: str(threads) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    if threads == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return env


def child_env(workers: int) -> dict:
    env = {**os.environ, **RUN_ENV}
    if workers > 1:
        # Runs side by side share the cores instead of each spawning one thread per core.
        for var, value in thread_env(max(1, (os.cpu_count() or 1) // workers)).items():
            env.setdefault(var, value)
    return env


class Board:
    """The state of a launch: queued specs, running launches, finished records, and the seconds per
    step of each script's finished runs (for the time-left estimate)."""

    def __init__(self, plan: list, out: Path, workers: int):
        self.plan, self.out, self.workers, self.env = plan, out, workers, child_env(workers)
        self.queue, self.running, self.records = list(plan), [], {}
        self.per_step_s, self.failed, self.start = {}, 0, time.time()

    def record(self, spec: dict, record: dict) -> None:
        self.records[spec["run_name"]] = record
        (self.out / "harness" / f"{spec['run_name']}.json").write_text(json.dumps(record, indent=2))

    def start_next(self) -> None:
        """Starts queued runs while fewer than `workers` run."""
        while self.queue and len(self.running) < self.workers:
            spec = self.queue.pop(0)
            run_dir = self.out / "runs" / spec["run_name"]
            if run_dir.exists():  # a stale summary from an earlier run must not count for this one
                shutil.rmtree(run_dir)
            if not Path(spec["script_path"]).is_file():
                self.record(
                    spec,
                    {
                        "returncode": None,
                        "duration_s": 0.0,
                        "timed_out": False,
                        "missing_script": True,
                        "log": None,
                        "command": shlex.join(command_for(spec)),
                    },
                )
                self.failed += 1
                print(f"[bench] FAILED {spec['run_name']}: script {spec['script_path']} not found", flush=True)
                continue
            self.running.append(Launch(spec, self.out, self.env))
            print(f"[bench] start {spec['run_name']}", flush=True)

    def reap(self) -> bool:
        """Stops runs past their timeout and records every run that ended; True if one did."""
        ended = False
        for launch in list(self.running):
            timeout = launch.spec.get("timeout_s")
            if launch.proc.poll() is None and timeout and launch.elapsed() > timeout:
                launch.timed_out = True
                launch.kill()
                launch.proc.wait()
            if launch.proc.poll() is not None:
                self.running.remove(launch)
                self.finish(launch)
                ended = True
        return ended

    def finish(self, launch: Launch) -> None:
        record = launch.finish()
        self.record(launch.spec, record)
        result = collect_run(launch.spec, self.out, record)
        name = launch.spec["run_name"]
        if result["status"] == "ok":
            if result["total_timesteps"]:
                self.per_step_s[launch.spec["script"]] = record["duration_s"] / result["total_timesteps"]
            print(
                f"[bench] done {name} in {record['duration_s']:.0f} s: score {result['score']:.2f}, "
                f"{result['sps']:,.0f} steps/s",
                flush=True,
            )
        else:
            self.failed += 1
            print(f"[bench] FAILED {name}: {result['reason']} (log: {record['log']})", flush=True)

    def interrupt(self) -> None:
        """Ctrl-C: stops the running scripts; every unfinished run is recorded as interrupted."""
        for launch in self.running:
            launch.kill()
            launch.proc.wait()
            self.records[launch.spec["run_name"]] = {**launch.finish(), "interrupted": True}
        for spec in self.queue:
            self.records[spec["run_name"]] = {
                "returncode": None,
                "duration_s": 0.0,
                "timed_out": False,
                "interrupted": True,
                "log": None,
                "command": shlex.join(command_for(spec)),
            }
        self.records["__interrupted__"] = True

    def seconds_left(self, spec: dict, launch=None):
        """A run's time left: its own progress line, else its script's seconds per step so far."""
        left = launch.time_left() if launch else None
        rate = self.per_step_s.get(spec["script"])
        if left is None and rate is not None and spec.get("total_timesteps") is not None:
            left = max(rate * spec["total_timesteps"] - (launch.elapsed() if launch else 0.0), 0.0)
        return left

    def estimate_left(self) -> str:
        lefts = [self.seconds_left(run.spec, run) for run in self.running] + [self.seconds_left(s) for s in self.queue]
        known, unknown = [x for x in lefts if x is not None], sum(x is None for x in lefts)
        if unknown and not sum(known):
            return "time left: not yet known"
        text = fmt_duration(sum(known) / max(1, min(self.workers, len(lefts))))
        return f"~{text}{'+' if unknown else ''} left" + (f" ({unknown} runs not yet estimated)" if unknown else "")

    def status_line(self) -> str:
        now = [f"{run.spec['run_name']} {fmt_duration(run.elapsed())}" for run in self.running]
        return (
            f"[bench {fmt_duration(time.time() - self.start)}] {len(self.records)}/{len(self.plan)} done, "
            f"{self.failed} failed, {len(self.running)} running, {len(self.queue)} queued | {self.estimate_left()}"
            + (f" | running: {', '.join(now)}" if now else "")
        )


def run_plan(plan: list, out: Path, workers: int, progress_every: float = 15.0) -> dict:
    """Runs every spec (at most `workers` at a time), printing progress; returns {run_name: record}."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "harness").mkdir(parents=True, exist_ok=True)
    board, last_print = Board(plan, out, workers), 0.0
    try:
        while board.queue or board.running:
            board.start_next()
            time.sleep(0.2)
            if board.reap():
                last_print = 0.0
            if time.time() - last_print >= progress_every and (board.queue or board.running):
                print(board.status_line(), flush=True)
                last_print = time.time()
    except KeyboardInterrupt:
        print("[bench] interrupted: stopping the running scripts, writing the report of what finished", flush=True)
        board.interrupt()
    print(
        f"[bench] all {len(plan)} runs finished in {fmt_duration(time.time() - board.start)}, {board.failed} failed",
        flush=True,
    )
    return board.records
