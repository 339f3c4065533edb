"""Benchmark harness: run the scripts over envs and seeds, report against published scores.

    python benchmarks/run.py --suite smoke                  # every script, tiny budgets (CI, minutes)
    python benchmarks/run.py --suite quick --save-baseline  # ~1 h on 2 CPU cores; baselines/quick.json
    python benchmarks/run.py --suite quick --compare quick  # regression check against that baseline
    python benchmarks/run.py --suite full --dry-run         # list the runs and their commands
    python benchmarks/run.py --report-only --out DIR        # re-aggregate finished runs in DIR
    python benchmarks/run.py --suite smoke --launcher slurm # one sbatch job array; returns with its job id
    python benchmarks/run.py --out DIR --wait               # follow it; then the same report (docs/cluster.md)

Every run goes through the script's own CLI, in a subprocess whose working directory is the output
folder, so the script writes `DIR/runs/<run-name>/` (summary.json + TensorBoard events) as it
always does; its output goes to `DIR/logs/<run-name>.log`. Suites (`suites.toml`) and published
scores with their sources and protocols (`reference_scores.toml`) are data files next to this one.

The report (`DIR/report.md`, `DIR/results.json`, `DIR/plots/*.png`) has, per script and env:
the final-evaluation mean of each seed aggregated as mean and IQM (interquartile mean: the mean of
the middle 50% of runs), each with a 95% percentile-bootstrap CI over seeds; the human-normalized
score on Atari, with its IQM over all games and seeds under a stratified bootstrap (seeds resampled
within each game); steps/s; wall time; pass/fail. Per script, a performance profile (fraction of
runs above each normalized score), and per pair of scripts that ran the same envs, the probability
of improvement (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice").

A run that crashes, times out, writes no summary.json, or has NaN in its summary or scalars is a
failed run: it is listed with its reason and log, the report is still written, the exit code is 1.
`--compare` exits 1 when a score dropped significantly or steps/s fell more than 15% (see
`results.compare_results`). Exit code 2: bad harness input.

This file is the command; the parts live beside it: launch.py (subprocesses and progress),
cluster.py (the Slurm launcher: the plan as one job array, followed with --wait), results.py (collecting, aggregating, the regression check), stats.py (the statistics),
references.py (published scores), report.py (report.md and plots).
"""

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import cluster
from launch import command_for, run_plan
from references import DEFAULT_NORMALIZER, env_family, load_references, normalizer_table
from report import fmt_ci, render_report, write_plots
from results import build_results, compare_results, improvement_over_baseline, profiles

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
SUITES_FILE = BENCH_DIR / "suites.toml"
BASELINES_DIR = BENCH_DIR / "baselines"


def fail(message: str) -> None:
    """Bad harness input: one line naming the problem and the fix, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


# ==== Suites and plans ====
def load_suites(path: Path = SUITES_FILE) -> dict:
    with open(path, "rb") as f:
        suites = {name: value for name, value in tomllib.load(f).items() if isinstance(value, dict)}
    for name, suite in suites.items():
        suite["_dir"] = str(Path(path).resolve().parent)
        suite["name"] = name
    return suites


def select_suite(value: str) -> dict:
    """--suite: a name in suites.toml, or a .toml file whose first suite is used."""
    if value.endswith(".toml"):
        if not Path(value).is_file():
            fail(f"--suite {value}: file not found")
        return next(iter(load_suites(Path(value)).values()))
    suites = load_suites()
    if value not in suites:
        fail(f"unknown --suite {value!r}; choose one of {', '.join(suites)} or pass a .toml file")
    return suites[value]


def plan_runs(suite: dict, scripts=None, env_ids=None, seeds=None, extra_args=(), timeout_s=None) -> list:
    """The runs of a suite as a list of specs, after the --scripts / --env-ids / --seeds choices.

    --env-ids replaces the env list of every selected entry, but only with env ids of the same
    family as the entry's own (Atari ids go to Atari scripts, MinAtar ids to MinAtar scripts). A run
    that an earlier entry already plans (same script, env and seed: same run folder) is planned once.
    """
    entries = suite.get("runs", [])
    if scripts:
        wanted = {s if s.endswith(".py") else s + ".py" for s in scripts}
        known = {e["script"] for e in entries}
        unknown = wanted - known
        if unknown:
            fail(
                f"--scripts {', '.join(sorted(unknown))} not in suite {suite['name']!r}; "
                f"it has {', '.join(sorted(known))}"
            )
        entries = [e for e in entries if e["script"] in wanted]
    plan = []
    for entry in entries:
        envs = entry["env_ids"]
        if env_ids:
            families = {env_family(e)[0] for e in envs}
            envs = [e for e in env_ids if env_family(e)[0] in families]
        script_path = Path(suite["_dir"]) / entry["path"] if "path" in entry else ROOT / entry["script"]
        for env_id in envs:
            for seed in seeds or entry["seeds"]:
                run_name = f"{env_id.replace('/', '-')}__{Path(entry['script']).stem}__{seed}"
                if any(run["run_name"] == run_name for run in plan):
                    continue
                plan.append(
                    {
                        "script": entry["script"],
                        "script_path": str(script_path),
                        "env_id": env_id,
                        "seed": int(seed),
                        "total_timesteps": entry.get("total_timesteps"),
                        "args": [str(a) for a in entry.get("args", [])] + list(extra_args),
                        "run_name": run_name,
                        "judge": bool(entry.get("judge", suite.get("judge", False))),
                        "timeout_s": timeout_s or entry.get("timeout_s", suite.get("timeout_s")),
                    }
                )
    if not plan:
        fail(
            f"the choices leave no run in suite {suite['name']!r}; check --scripts / --env-ids "
            "(an env id only applies to scripts of its family: Atari, MinAtar, other)"
        )
    return plan


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
        plan.append(
            {
                "script": s.get("script", "?"),
                "script_path": "",
                "env_id": s.get("env_id", "?"),
                "seed": s.get("seed"),
                "total_timesteps": s.get("total_timesteps"),
                "args": [],
                "run_name": path.parent.name,
                "judge": True,
                "timeout_s": None,
            }
        )
    return plan


def load_records(out: Path) -> dict:
    return {path.stem: json.loads(path.read_text()) for path in (out / "harness").glob("*.json")}


def resolve_baseline(value: str) -> Path:
    path = Path(value)
    if path.is_dir():
        path = path / "results.json"
    elif not path.exists() and (BASELINES_DIR / f"{value}.json").is_file():
        path = BASELINES_DIR / f"{value}.json"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(BASELINES_DIR.glob("*.json"))) or "none yet"
        fail(
            f"--compare {value}: no such baseline (a results.json, a report folder, or a name in "
            f"benchmarks/baselines/: {known})"
        )
    return path


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    if out.returncode != 0:
        return ""
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


# ==== Main, step by step ====
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument(
        "--suite",
        default="smoke",
        help="suite name in benchmarks/suites.toml (smoke, quick, full) or path to a suites .toml file "
        "whose first suite is used",
    )
    p.add_argument("--scripts", nargs="+", help="only these scripts of the suite (e.g. dqn_cartpole.py)")
    p.add_argument(
        "--env-ids",
        nargs="+",
        help="run the selected scripts on these env ids instead of the suite's "
        "(each id goes to the scripts of its family: Atari, MinAtar, other)",
    )
    p.add_argument("--seeds", nargs="+", type=int, help="these seeds instead of the suite's")
    p.add_argument(
        "--workers",
        type=int,
        help="runs at a time (default: the suite's; 1 gives the cleanest steps/s, 2 finishes sooner on 2 cores)",
    )
    p.add_argument("--out", help="output folder (default: benchmarks/out/<suite>)")
    p.add_argument(
        "--compare",
        metavar="BASELINE",
        help="results.json, report folder, or name in benchmarks/baselines/ to check for regressions",
    )
    p.add_argument(
        "--save-baseline",
        nargs="?",
        const="",
        metavar="NAME",
        help="store this run's results.json as benchmarks/baselines/NAME.json (default NAME: the suite)",
    )
    p.add_argument(
        "--timeout", type=float, help="seconds per run before it is stopped and failed (default: the suite's)"
    )
    p.add_argument("--extra-args", default="", help='flags appended to every script command, e.g. "--no-cuda"')
    p.add_argument("--report-only", action="store_true", help="launch nothing: rebuild the report from --out")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their commands, launch nothing")
    p.add_argument(
        "--plant-drop",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="lower every score by FRACTION of its magnitude before aggregating (with --report-only "
        "--compare: shows whether the baseline's spread lets the check catch such a drop)",
    )
    p.add_argument("--progress-every", type=float, default=15.0, help="seconds between progress lines")
    slurm = p.add_argument_group("Slurm (docs/cluster.md)")
    slurm.add_argument(
        "--launcher",
        choices=["local", "slurm"],
        default="local",
        help="local: subprocesses on this machine; slurm: submit the plan as one sbatch job array and return "
        "(running it again submits only the runs that are neither finished ok nor queued)",
    )
    slurm.add_argument("--partition", help="Slurm partition (default: the cluster's)")
    slurm.add_argument("--gpus-per-run", type=int, metavar="N", help="GPUs per run (--gres=gpu:N)")
    slurm.add_argument("--cpus-per-run", type=int, metavar="C", help="CPUs per run (default 1); also its thread count")
    slurm.add_argument("--mem", help="memory per run, as sbatch's --mem takes it (e.g. 16G)")
    slurm.add_argument(
        "--requeue",
        action="store_true",
        help="let Slurm requeue preempted runs; a requeued run continues from its checkpoint (--resume)",
    )
    slurm.add_argument(
        "--wait", action="store_true", help="follow the Slurm jobs of --out until every run ended, then report"
    )
    slurm.add_argument("--poll-every", type=float, default=10.0, help="seconds between Slurm state queries")
    return p.parse_args(argv)


def check_slurm_args(args) -> None:
    given = [
        f"--{k.replace('_', '-')}" for k in ("partition", "gpus_per_run", "cpus_per_run", "mem") if getattr(args, k)
    ]
    if args.launcher != "slurm" and (given or args.requeue):
        fail(f"{' '.join(given + ['--requeue'] * args.requeue)} apply to --launcher slurm only; add --launcher slurm")
    for flag, value in (("--gpus-per-run", args.gpus_per_run), ("--cpus-per-run", args.cpus_per_run)):
        if value is not None and value < 1:
            fail(f"{flag} must be at least 1")
    if args.poll_every <= 0:
        fail("--poll-every must be a positive number of seconds")


def slurm_options(args, workers: int) -> dict:
    return {
        "workers": workers,
        "partition": args.partition,
        "gpus": args.gpus_per_run,
        "cpus": args.cpus_per_run,
        "mem": args.mem,
        "requeue": args.requeue,
    }


def reload_launch(out: Path, workers: int, args) -> tuple:
    """--report-only / --wait: (plan, records, launch) of the earlier launch in `out`; a Slurm launch's
    records come from its tasks and Slurm's states (followed until every task ended with --wait)."""
    flag = "--report-only" if args.report_only else "--wait"
    if not out.is_dir():
        fail(f"{flag}: {out} does not exist; pass the --out folder of an earlier launch")
    plan = plan_from_folder(out)
    if not plan:
        fail(f"{flag}: no plan.json and no runs/*/summary.json in {out}")
    launched = json.loads((out / "plan.json").read_text()) if (out / "plan.json").is_file() else {}
    launched = {
        "suite": "(folder)",
        "workers": workers,
        "launcher": "local",
        "normalizer": DEFAULT_NORMALIZER,
    } | launched
    if launched["launcher"] == "slurm":
        records = cluster.follow(plan, out, args.wait, args.poll_every, args.progress_every)
    elif args.wait:
        fail(f"--wait: {out} holds no Slurm launch; submit one with --launcher slurm (--wait follows it)")
    else:
        records = load_records(out) if (out / "harness").is_dir() else None
    return plan, records, launched


def write_plan(out: Path, launched: dict, plan: list) -> None:
    """plan.json: the plan and how it was launched, for a later --report-only or --wait."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps({**launched, "plan": plan}, indent=2))


def launch(plan: list, launched: dict, out: Path, progress_every: float) -> dict:
    """Writes plan.json and runs the plan here; returns the records."""
    write_plan(out, launched, plan)
    print(
        f"[bench] suite {launched['suite']}: {len(plan)} runs, {launched['workers']} worker(s), output in {out}",
        flush=True,
    )
    return run_plan(plan, out, launched["workers"], progress_every)


def run_meta(suite_name: str, workers: int, plant_drop: float, argv) -> dict:
    return {
        "suite": suite_name,
        "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "host": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()})",
        "workers": workers,
        "git": git_commit(),
        "command": shlex.join(["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "planted_drop": plant_drop,
    }


def compare_with_baseline(results: dict, baseline_path: Path, workers: int) -> dict:
    """The regression check, the probability of improvement over the baseline and the baseline's
    performance profiles; stored in results['comparison']."""
    baseline = json.loads(baseline_path.read_text())
    checks = compare_results(results, baseline)
    comparison = {
        "baseline": str(baseline_path),
        "checks": checks,
        "improvement": improvement_over_baseline(results, baseline, checks),
        "profiles": profiles(baseline["rows"]),
    }
    results["comparison"] = comparison
    if baseline.get("meta", {}).get("workers") not in (None, workers):
        print(
            f"[bench] warning: baseline ran with {baseline['meta']['workers']} worker(s), this with {workers}: "
            "steps/s are not comparable",
            flush=True,
        )
    return comparison


def write_report(out: Path, results: dict, comparison) -> None:
    plots = write_plots(out, results, (comparison or {}).get("profiles", ()))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "report.md").write_text(render_report(results, plots, comparison))
    print(f"[bench] report: {out / 'report.md'}", flush=True)
    for row in results["rows"]:
        if row["seeds"]:
            print(
                f"[bench]   {row['script']} {row['env_id']}: IQM {fmt_ci(row['iqm'], row['iqm_ci'], 2)} over "
                f"{len(row['seeds'])} seeds, {row['sps']:,.0f} steps/s, {row['verdict']}",
                flush=True,
            )
        else:
            print(f"[bench]   {row['script']} {row['env_id']}: {row['verdict']}", flush=True)


def failures_code(results: dict) -> int:
    """1 if a run failed (and says how many), else 0."""
    n_failed = sum(r["status"] != "ok" for r in results["runs"])
    if n_failed:
        print(f"[bench] {n_failed} of {len(results['runs'])} runs failed (see the report's 'Failed runs')", flush=True)
    return int(bool(n_failed))


def regression_code(comparison) -> int:
    """1 if the regression check flagged a row or compared nothing, else 0."""
    if comparison is None:
        return 0
    flagged = [c for c in comparison["checks"] if c["flags"]]
    compared = sum(bool(c.get("compared")) for c in comparison["checks"])
    for c in flagged:
        print(f"[bench] REGRESSION {c['script']} {c['env_id']}: {', '.join(c['flags'])}", flush=True)
    if compared == 0:
        print("[bench] regression check compared nothing (no common script/env at the same budget)", flush=True)
        return 1
    if not flagged:
        print(f"[bench] regression check: {compared} compared, none flagged", flush=True)
    return int(bool(flagged))


def save_baseline(out: Path, name: str, complete: bool) -> int:
    """--save-baseline: copies results.json to baselines/NAME.json; refused (1) unless every run finished ok."""
    if not complete:
        print("[bench] not saving a baseline: some runs failed", flush=True)
        return 1
    BASELINES_DIR.mkdir(exist_ok=True)
    target = BASELINES_DIR / f"{name}.json"
    shutil.copyfile(out / "results.json", target)
    print(f"[bench] baseline saved to {target}", flush=True)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    suite = select_suite(args.suite)
    check_slurm_args(args)
    if args.workers is not None and args.workers < 1:
        fail("--workers must be at least 1")
    workers = args.workers or int(suite.get("workers", 1))
    out = Path(args.out) if args.out else BENCH_DIR / "out" / suite["name"]
    baseline_path = resolve_baseline(args.compare) if args.compare else None
    references = load_references()
    try:
        if args.report_only or (args.wait and args.launcher == "local"):
            plan, records, launched = reload_launch(out, workers, args)
        else:
            normalizer = suite.get("normalizer", DEFAULT_NORMALIZER)
            if not normalizer_table(references, normalizer):
                fail(f"suite {suite['name']}: normalizer {normalizer!r} is no table of reference_scores.toml")
            plan = plan_runs(suite, args.scripts, args.env_ids, args.seeds, shlex.split(args.extra_args), args.timeout)
            launched = {"suite": suite["name"], "workers": workers, "launcher": args.launcher, "normalizer": normalizer}
            if args.dry_run:
                if args.launcher == "slurm":
                    print(cluster.batch_script(plan, out.resolve(), suite["name"], slurm_options(args, workers)))
                else:
                    print("\n".join(shlex.join(command_for(spec)) for spec in plan))
                print(f"{len(plan)} runs, {workers} worker(s), output in {out}")
                return 0
            if args.launcher == "local":
                records = launch(plan, launched, out, args.progress_every)
            else:
                cluster.submit(plan, suite["name"], out.resolve(), slurm_options(args, workers))
                write_plan(out, launched, plan)
                if not args.wait:
                    return 0
                records = cluster.follow(plan, out, True, args.poll_every, args.progress_every)
    except cluster.BadInput as e:
        fail(str(e))

    interrupted = bool(records and records.pop("__interrupted__", False))
    meta = run_meta(launched["suite"], launched["workers"], args.plant_drop, argv)
    if launched["launcher"] == "slurm":
        meta["launcher"] = cluster.describe(out)
    results = build_results(plan, records, out, references, meta, args.plant_drop, launched["normalizer"])
    comparison = compare_with_baseline(results, baseline_path, launched["workers"]) if baseline_path else None
    write_report(out, results, comparison)
    code = max(failures_code(results), regression_code(comparison))
    if args.save_baseline is not None:
        complete = not interrupted and all(r["status"] == "ok" for r in results["runs"])
        code = max(code, save_baseline(out, args.save_baseline or launched["suite"], complete))
    return 130 if interrupted else code


if __name__ == "__main__":
    sys.exit(main())
