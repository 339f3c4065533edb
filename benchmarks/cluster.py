"""The Slurm launcher (`run.py --launcher slurm`, docs/cluster.md): a plan goes to Slurm as one sbatch
job array, one task per run, each task the script's own CLI with absolute paths, run by the batch
script written to DIR/slurm/submit-<n>.sh. `run.py --out DIR --wait` follows the array until every
task ended and hands back the records launch.py would have written, so that results.py and report.py
build the same report. Plain sbatch, squeue and sacct: no Python dependency.

A task writes logs/<run>.log (the script's output) and harness/<run>.json (exit code, start and end)
as a local launch does; Slurm's own lines (time limit, cancellation) go to logs/slurm/<job>_<task>.out.
A task Slurm stopped (TIMEOUT, CANCELLED, PREEMPTED, NODE_FAIL, OUT_OF_MEMORY, ...) is a failed run
with that state as its reason. With --requeue, a task Slurm requeues after a preemption continues its
run with the script's own --resume from its last checkpoint (the scripts write checkpoints atomically,
so a SIGTERM or SIGKILL at any moment leaves a usable one).
"""

import json
import math
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from launch import RUN_ENV, command_for, fmt_duration, thread_env
from results import collect_run

# States in which a task may still run; any other state is final.
ACTIVE = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESIZING",
    "SUSPENDED",
    "STOPPED",
    "SIGNALING",
    "STAGE_OUT",
    "RESV_DEL_HOLD",
}
# Why a task in a final state other than COMPLETED / FAILED failed (FAILED: its exit code and log say).
REASONS = {
    "TIMEOUT": "Slurm TIMEOUT: cut by --time={time} (minutes: the longest timeout_s of its array, rounded up)",
    "CANCELLED": "Slurm CANCELLED (scancel, or an administrator)",
    "PREEMPTED": "Slurm PREEMPTED (submit with --requeue to have preempted runs requeued and resumed)",
    "NODE_FAIL": "Slurm NODE_FAIL: its node failed",
    "OUT_OF_MEMORY": "Slurm OUT_OF_MEMORY: over its memory (--mem)",
    "BOOT_FAIL": "Slurm BOOT_FAIL: its node failed to boot",
    "DEADLINE": "Slurm DEADLINE: not started before its deadline",
}

# The batch script's part that is the same for every task; `run` and `cmd` are set above it.
TASK = r"""
dir=runs/$run
if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && [ -f "$dir/summary.json" ] && [ -f "harness/$run.json" ]; then
	exit 0 # requeued after it finished (scontrol requeue of an ended task): its run and record stand
elif [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && [ -f "$dir/checkpoint" ]; then
	cmd=("${cmd[0]}" "${cmd[1]}" --resume "$PWD/$dir") # requeued by Slurm: the script's own --resume
else
	rm -rf "$dir" "harness/$run.json" # a first start, or a requeue before any checkpoint: from step 0
	: >"logs/$run.log"
fi
echo "\$ ${cmd[*]}   # Slurm job ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}, restart ${SLURM_RESTART_COUNT:-0}" >>"logs/$run.log"
started=$(date +%s.%N)
"${cmd[@]}" >>"logs/$run.log" 2>&1 &
child=$!
# SIGTERM (time limit, scancel, preemption) reaches the script too: let it end, then write the record.
trap 'kill -TERM "$child" 2>/dev/null' TERM
wait "$child"
rc=$?
while kill -0 "$child" 2>/dev/null; do
	wait "$child"
	rc=$?
done
printf '{"returncode": %d, "started": %s, "ended": %s, "slurm_job": "%s_%s", "restarts": %d}\n' "$rc" "$started" \
	"$(date +%s.%N)" "$SLURM_ARRAY_JOB_ID" "$SLURM_ARRAY_TASK_ID" "${SLURM_RESTART_COUNT:-0}" >"harness/$run.json.tmp"
mv "harness/$run.json.tmp" "harness/$run.json"
exit "$rc"
"""


class BadInput(Exception):
    """Bad input (run.py prints it as its one-line error, exit code 2): nothing was submitted."""


class SlurmError(Exception):
    """A Slurm command that did not answer (no controller, for one)."""


def slurm(*cmd, check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SlurmError(f"{cmd[0]}: {e}") from None
    if check and proc.returncode != 0:
        raise SlurmError(f"{cmd[0]}: {last_line(proc.stderr) or f'exit code {proc.returncode}'}")
    return proc


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ==== The batch script ====
def time_limit_min(plan: list):
    """--time of an array, in whole minutes (Slurm's unit): its longest timeout_s, rounded up; None if none."""
    timeouts = [spec["timeout_s"] for spec in plan if spec.get("timeout_s")]
    return math.ceil(max(timeouts) / 60) if timeouts else None


def sbatch_options(plan: list, out: Path, suite: str, options: dict) -> list:
    opts = [
        f"--job-name=bench-{suite}",
        f"--array=0-{len(plan) - 1}%{options['workers']}",
        f"--chdir={out}",
        f"--output={out}/logs/slurm/%A_%a.out",
        f"--cpus-per-task={options.get('cpus') or 1}",
        "--requeue" if options.get("requeue") else "--no-requeue",
    ]
    minutes = time_limit_min(plan)
    if minutes is not None:
        opts.append(f"--time={minutes}")
    if options.get("partition"):
        opts.append(f"--partition={options['partition']}")
    if options.get("gpus"):
        opts.append(f"--gres=gpu:{options['gpus']}")
    if options.get("mem"):
        opts.append(f"--mem={options['mem']}")
    return opts


def batch_script(plan: list, out: Path, suite: str, options: dict) -> str:
    """The sbatch script of one submission: task i runs plan[i]."""
    env = {**RUN_ENV, **thread_env(options.get("cpus") or 1)}
    lines = ["#!/bin/bash", *(f"#SBATCH {opt}" for opt in sbatch_options(plan, out, suite, options))]
    lines += [
        "# Written by benchmarks/run.py --launcher slurm (benchmarks/cluster.py): task i is run i of the list",
        "# below, through the script's own CLI; output in logs/<run>.log, record in harness/<run>.json.",
        "set -u",
        *(f'export {var}="${{{var}:-{value}}}"' for var, value in env.items()),
        'case "$SLURM_ARRAY_TASK_ID" in',
        *(
            f"{i}) run={shlex.quote(spec['run_name'])} cmd=({shlex.join(command_for(spec))}) ;;"
            for i, spec in enumerate(plan)
        ),
        "esac",
    ]
    return "\n".join(lines) + TASK


# ==== Slurm's view of the tasks ====
def parse_states(text: str) -> dict:
    """{'<job>_<task>' (or '<job>'): state} from `squeue -o %i|%T` or `sacct -P -o JobID,State` lines.

    A pending array range such as 12_[3-5,7%2] stands for each of its tasks; 'CANCELLED by 0' is CANCELLED.
    """
    states = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        job_id, state = (field.strip() for field in line.split("|")[:2])
        state = state.split()[0] if state else "UNKNOWN"
        job, _, tasks = job_id.partition("_")
        if not tasks.startswith("["):
            states[job_id] = state
            continue
        for part in tasks.strip("[]").split("%")[0].split(","):
            lo, _, hi = part.partition("-")
            states.update({f"{job}_{t}": state for t in range(int(lo), int(hi or lo) + 1)})
    return states


def query_states(jobs: set) -> dict:
    """States of the tasks of these array jobs: squeue (the controller, which knows every live job at
    once), then sacct for the tasks the controller has forgotten (where accounting is on)."""
    if not jobs:
        return {}
    ids = ",".join(sorted(jobs, key=int))
    proc = slurm("squeue", "-h", "-r", "-t", "all", "-j", ids, "-o", "%i|%T", check=False)
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:  # every job of the list forgotten
        raise SlurmError(f"squeue: {last_line(proc.stderr)}")
    states = parse_states(proc.stdout if proc.returncode == 0 else "")
    if shutil.which("sacct"):
        acct = slurm("sacct", "-n", "-P", "-X", "-j", ids, "-o", "JobID,State", check=False)
        if acct.returncode == 0:  # not where accounting is off ("Slurm accounting storage is disabled")
            states = {**parse_states(acct.stdout), **states}
    return states


# ==== Submissions (DIR/slurm/jobs.json) ====
def load_jobs(out: Path) -> dict:
    """{'runs': {run name: '<job>_<task>'}, 'submissions': [...]}; empty before the first submission."""
    path = out / "slurm" / "jobs.json"
    return json.loads(path.read_text()) if path.is_file() else {"runs": {}, "submissions": []}


def task_record(spec: dict, out: Path, jobs: dict, states: dict) -> dict:
    """The record launch.py would have written for this run (results.collect_run reads it), with the
    reason Slurm gives when it stopped the task, or why the run has not ended."""
    name = spec["run_name"]
    job = jobs["runs"].get(name)
    state = states.get(job)
    record = {
        "returncode": None,
        "duration_s": 0.0,
        "timed_out": state == "TIMEOUT",
        "log": f"logs/{name}.log",
        "command": shlex.join(command_for(spec)),
        "slurm_job": job,
        "slurm_state": state,
    }
    path = out / "harness" / f"{name}.json"
    task = json.loads(path.read_text()) if job and path.is_file() else None
    if task and task.get("slurm_job") != job:  # an earlier submission's record: this task has not ended
        task = None
    if task:
        record.update(
            returncode=task["returncode"], duration_s=task["ended"] - task["started"], restarts=task["restarts"]
        )
    if job is None:
        record["reason"] = "not submitted to Slurm: run the same --launcher slurm command again"
    elif state in ACTIVE:
        record["reason"] = f"not finished: Slurm {state} (job {job}); follow it with --wait"
    elif state in REASONS:
        submission = next(s for s in jobs["submissions"] if s["job"] == job.split("_")[0])
        record["reason"] = REASONS[state].format(time=submission.get("time_min"))
    elif task is None and state is None and job.split("_")[0] in {k.split("_")[0] for k in states}:
        # The controller still lists other tasks of the array: this one was removed while pending, which is
        # what scancel of a pending task does (it leaves no record where accounting is off).
        record["reason"] = f"Slurm no longer lists task {job} of a known array: cancelled before it started"
    elif task is None:
        seen = f"Slurm {state}" if state else "Slurm no longer knows the job"
        record["reason"] = f"{seen} and the task wrote no record (job {job}): see logs/slurm/{job}.out"
    return record


def array_jobs(jobs: dict, plan: list) -> set:
    return {jobs["runs"][s["run_name"]].split("_")[0] for s in plan if s["run_name"] in jobs["runs"]}


def needs_submission(spec: dict, out: Path, jobs: dict, states: dict) -> bool:
    """A run is submitted unless Slurm still has it queued or running, or it already finished ok."""
    job = jobs["runs"].get(spec["run_name"])
    if job is not None and states.get(job) in ACTIVE:
        return False
    return job is None or collect_run(spec, out, task_record(spec, out, jobs, states))["status"] != "ok"


def check_partition(partition) -> None:
    if not partition or not shutil.which("sinfo"):
        return
    proc = slurm("sinfo", "-h", "-o", "%R", check=False)
    known = sorted(set(proc.stdout.split()))
    if proc.returncode == 0 and partition not in known:
        raise BadInput(f"--partition {partition}: no such Slurm partition; sinfo lists {', '.join(known) or 'none'}")


def submit(plan: list, suite: str, out: Path, options: dict) -> None:
    """Submits the runs of the plan that are not finished ok nor still queued or running, as one job array."""
    if shutil.which("sbatch") is None:
        raise BadInput("--launcher slurm: no sbatch on PATH; install Slurm's client commands, or use --launcher local")
    missing = sorted({s["script_path"] for s in plan if not Path(s["script_path"]).is_file()})
    if missing:
        raise BadInput(f"script not found: {', '.join(missing)}; fix the suite's script or path")
    check_partition(options.get("partition"))
    jobs = load_jobs(out)
    try:
        states = query_states(array_jobs(jobs, plan))
    except SlurmError as e:
        raise BadInput(f"{e}; is the Slurm controller up (sinfo)?") from None
    todo = [spec for spec in plan if needs_submission(spec, out, jobs, states)]
    n = len(jobs["submissions"]) + 1
    for sub in ("logs/slurm", "harness", "slurm"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    if not todo:
        print(f"[bench] nothing to submit: all {len(plan)} runs finished ok or are queued in Slurm", flush=True)
        return
    script = out / "slurm" / f"submit-{n}.sh"
    script.write_text(batch_script(todo, out, suite, options))
    start = time.time()
    try:
        proc = slurm("sbatch", "--parsable", str(script), check=False)
    except SlurmError as e:
        raise BadInput(f"{e}; the job was not submitted") from None
    if proc.returncode != 0:
        # Every error line: sbatch often says what is wrong first and "Batch job submission failed" last.
        errors = [line.removeprefix("sbatch: error: ").strip() for line in proc.stderr.splitlines() if line.strip()]
        why = "; ".join(errors) or f"exit code {proc.returncode}"
        raise BadInput(
            f"sbatch refused the job: {why}; fix the options (--partition, --gpus-per-run, --cpus-per-run, --mem)"
        )
    job = proc.stdout.strip().split(";")[0]
    jobs["submissions"].append(
        {
            "job": job,
            "script": str(script.relative_to(out)),
            "runs": len(todo),
            "time_min": time_limit_min(todo),
            "submitted": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(start)),
            "sbatch_s": round(time.time() - start, 3),
        }
    )
    jobs["runs"].update({spec["run_name"]: f"{job}_{i}" for i, spec in enumerate(todo)})
    (out / "slurm" / "jobs.json").write_text(json.dumps(jobs, indent=2))
    skipped = f", {len(plan) - len(todo)} finished ok or still queued" if len(todo) < len(plan) else ""
    print(
        f"[bench] submitted {len(todo)} runs as Slurm job array {job} (0-{len(todo) - 1}%{options['workers']}, "
        f"{script}){skipped}; follow it: python benchmarks/run.py --out {out} --wait",
        flush=True,
    )


# ==== Following ====
def follow(plan: list, out: Path, wait: bool, poll_every: float = 10.0, progress_every: float = 15.0) -> dict:
    """The records of the plan's runs, once every task ended (wait) or as they stand (not wait)."""
    jobs = load_jobs(out)
    ids, start, last_print, polls, poll_s = array_jobs(jobs, plan), time.time(), 0.0, 0, 0.0
    states, interrupted = {}, False
    try:
        while True:
            t = time.time()
            try:
                states = query_states(ids)
            except SlurmError as e:
                print(f"[bench] warning: {e}; asking again in {poll_every:g} s", flush=True)
                if not wait:
                    break
                time.sleep(poll_every)
                continue
            polls, poll_s = polls + 1, poll_s + time.time() - t
            counts = {}
            for spec in plan:
                state = states.get(jobs["runs"].get(spec["run_name"])) or "ENDED"
                counts[state] = counts.get(state, 0) + 1
            active = sum(n for state, n in counts.items() if state in ACTIVE)
            if not wait or not active:
                break
            if time.time() - last_print >= progress_every:
                text = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
                print(
                    f"[bench {fmt_duration(time.time() - start)}] Slurm job(s) {', '.join(sorted(ids))}: {text}",
                    flush=True,
                )
                last_print = time.time()
            time.sleep(poll_every)
    except KeyboardInterrupt:
        print("[bench] stopped following; the tasks go on in Slurm (follow again with --wait)", flush=True)
        interrupted = True
    if wait:
        print(
            f"[bench] Slurm tasks ended; followed for {fmt_duration(time.time() - start)}, "
            f"{polls} state queries of {1000 * poll_s / max(polls, 1):.0f} ms each",
            flush=True,
        )
    records = {spec["run_name"]: task_record(spec, out, jobs, states) for spec in plan}
    if interrupted:
        records["__interrupted__"] = True
    return records


def describe(out: Path) -> str:
    """'slurm (job 12, 14)' for the report's header."""
    return "Slurm (job " + ", ".join(s["job"] for s in load_jobs(out)["submissions"]) + ")"
