"""From finished runs to results: collect each run (or the reason it failed), aggregate per script
and env against the published scores, and check a new set of results against a baseline."""

import json
import math
import re
from itertools import combinations
from pathlib import Path

import numpy as np
from references import DEFAULT_NORMALIZER, env_family, find_normalizer, find_reference, normalizer_table
from stats import (
    bootstrap_ci,
    bootstrap_diff_ci,
    bootstrap_task_means_ci,
    human_normalized,
    iqm,
    performance_profile,
    performance_profile_bands,
    probability_of_improvement,
    probability_of_improvement_ci,
    task_means,
)

RESULTS_VERSION = 1
SPS_DROP_LIMIT = 0.15
# Thresholds of the performance-profile table (the plots use a fine grid); 1 is the human tester on
# Atari and the published score elsewhere.
PROFILE_TAUS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
RULES = {
    "threshold": "IQM over seeds ≥ the published number",
    "ci_reaches": "upper end of the IQM's 95% CI ≥ the published number (not significantly below it)",
}


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
        scalars[tag] = [
            (e.step, e.wall_time, float(tensor_util.make_ndarray(e.tensor_proto).item())) for e in acc.Tensors(tag)
        ]
    return scalars


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _downsample(points: list, n: int = 200) -> list:
    if len(points) <= n:
        return points
    idx = np.linspace(0, len(points) - 1, n).round().astype(int)
    return [points[i] for i in idx]


def record_problem(record, spec: dict, out: Path):
    """Why the harness's record of a launch makes it a failed run, or None."""
    if record is None:
        return None
    if record.get("reason"):  # the launcher's own (e.g. Slurm's TIMEOUT or CANCELLED, see cluster.py)
        return record["reason"]
    if record.get("missing_script"):
        return f"script not found: {spec.get('script_path')}"
    if record.get("interrupted"):
        return "interrupted (Ctrl-C) before it finished"
    if record.get("timed_out"):
        return f"timed out after {spec.get('timeout_s')} s"
    if record.get("returncode") != 0:
        return f"exit code {record.get('returncode')}: {last_log_line(out, record)}"
    return None


def summary_problem(summary: dict, spec: dict):
    """Why a run's summary.json makes it a failed run, or None."""
    missing = {"final_eval", "sps", "wall_time_s", "total_timesteps"} - summary.keys()
    if missing:
        return f"summary.json lacks {', '.join(sorted(missing))}"
    if summary.get("env_id", spec["env_id"]) != spec["env_id"] or summary.get("seed", spec["seed"]) != spec["seed"]:
        return f"summary.json is for {summary.get('env_id')} seed {summary.get('seed')}, not this run"
    fe = summary["final_eval"]
    for key in ("mean", "min", "max", "std"):
        if key in fe and not _finite(fe[key]):
            return f"NaN/inf in summary final_eval.{key}"
    if not _finite(fe.get("mean")):
        return "summary final_eval has no mean"
    for key in ("sps", "wall_time_s"):
        if not _finite(summary[key]):
            return f"NaN/inf in summary {key}"
    if any(not _finite(p.get("mean")) for p in summary.get("eval_history", []) if isinstance(p, dict)):
        return "NaN in summary eval_history"
    return None


def collect_run(spec: dict, out: Path, record) -> dict:
    """A run's result: status 'ok' with its numbers, or 'failed' with the reason."""
    result = {k: spec.get(k) for k in ("run_name", "script", "env_id", "seed", "judge")}
    result.update(
        status="failed",
        reason=None,
        score=None,
        sps=None,
        wall_time_s=None,
        eval_history=[],
        train_curve=[],
        total_timesteps=spec.get("total_timesteps"),
        log=record.get("log") if record else None,
        returncode=record.get("returncode") if record else None,
    )
    run_dir = out / "runs" / spec["run_name"]
    result["reason"] = record_problem(record, spec, out)
    if result["reason"]:
        return result
    if not (run_dir / "summary.json").is_file():
        result["reason"] = "no summary.json written"
        return result
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except ValueError as e:  # json.loads accepts NaN; this is a truncated or corrupt file
        result["reason"] = f"summary.json unreadable ({e})"
        return result
    result["reason"] = summary_problem(summary, spec)
    if result["reason"]:
        return result
    try:
        scalars = read_scalars(run_dir)
    except Exception as e:  # noqa: BLE001 - any unreadable event file is a broken run
        result["reason"] = f"TensorBoard events unreadable ({type(e).__name__}: {e})"
        return result
    nan_tags = sorted(tag for tag, pts in scalars.items() if any(math.isnan(v) for _, _, v in pts))
    if nan_tags:
        result["reason"] = f"NaN in TensorBoard scalars {', '.join(nan_tags)}"
        return result
    train = scalars.get("charts/episodic_return", [])
    # Wall time from the run's first event of any tag, the closest the events get to its start.
    t0 = min((pts[0][1] for pts in scalars.values() if pts), default=None)
    history = [p for p in summary.get("eval_history", []) if isinstance(p, dict)]
    result.update(
        status="ok",
        score=float(summary["final_eval"]["mean"]),
        final_eval=summary["final_eval"],
        sps=float(summary["sps"]),
        wall_time_s=float(summary["wall_time_s"]),
        total_timesteps=int(summary["total_timesteps"]),
        device=summary.get("device"),
        versions=summary.get("versions"),
        eval_history=[{"step": p.get("step"), "wall_time_s": p.get("wall_time_s"), "mean": p["mean"]} for p in history],
        train_curve=_downsample([[s, w - t0, v] for s, w, v in train]),
    )
    return result


def last_log_line(out: Path, record: dict) -> str:
    if not record.get("log"):
        return ""
    try:
        lines = [
            line.strip() for line in (out / record["log"]).read_text(errors="replace").splitlines() if line.strip()
        ]
    except OSError:
        return ""
    # The exception line, not what follows it (JAX appends a note on traceback filtering).
    errors = [line for line in lines if EXCEPTION_LINE.match(line)]
    return (errors or lines or [""])[-1][:300]


EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b|error:|Killed)")


# ==== Aggregation ====
def build_results(
    plan: list,
    records,
    out: Path,
    references: dict,
    meta: dict,
    plant_drop: float = 0.0,
    normalizer: str = DEFAULT_NORMALIZER,
) -> dict:
    runs = [collect_run(spec, out, records.get(spec["run_name"]) if records is not None else None) for spec in plan]
    for r in runs:
        if r["status"] == "ok" and plant_drop:
            # A drop is a decrease whatever the sign of the score (Pong's are negative early on).
            r["score"] -= plant_drop * abs(r["score"])
    results = {"version": RESULTS_VERSION, "meta": meta, "runs": runs, **aggregate(runs, references, normalizer)}
    norm = normalizer_table(references, normalizer)
    if norm:
        results["normalizer"] = {k: v for k, v in norm.items() if k != "scores"}
    return results


def aggregate_row(script: str, env_id: str, group: list, references: dict, normalizer: str) -> dict:
    """One (script, env): its seeds' scores with mean and IQM and their CIs, HNS on Atari, verdict."""
    ok = sorted((r for r in group if r["status"] == "ok"), key=lambda r: r["seed"])
    row = {
        "script": script,
        "env_id": env_id,
        "family": env_family(env_id)[0],
        "seeds_planned": sorted(r["seed"] for r in group),
        "seeds": [r["seed"] for r in ok],
        "scores": [r["score"] for r in ok],
        "failed": len(group) - len(ok),
        "judge": any(r.get("judge") for r in group),
        "reference": find_reference(references, script, env_id),
    }
    budgets = sorted({r["total_timesteps"] for r in ok})
    row["budget"] = budgets[0] if len(budgets) == 1 else budgets or None
    if ok:
        scores = np.array(row["scores"])
        row.update(
            mean=float(scores.mean()),
            mean_ci=bootstrap_ci(scores, np.mean),
            iqm=float(iqm(scores)),
            iqm_ci=bootstrap_ci(scores, iqm),
            sps=float(np.mean([r["sps"] for r in ok])),
            sps_all=[r["sps"] for r in ok],
            wall_time_s=float(np.mean([r["wall_time_s"] for r in ok])),
        )
        norm = find_normalizer(references, env_id, normalizer)
        if norm is not None:
            rnd, hum, _ = norm
            hns = human_normalized(scores, rnd, hum)
            row["hns"] = {"scores": hns.tolist(), "iqm": float(iqm(hns)), "iqm_ci": bootstrap_ci(hns, iqm)}
            if row["reference"] is not None:
                row["hns"]["reference"] = float(human_normalized(row["reference"]["score"], rnd, hum))
    row["verdict"] = verdict(row)
    return row


def aggregate(runs: list, references: dict, normalizer: str = DEFAULT_NORMALIZER) -> dict:
    """Per-(script, env) rows; per script, the Atari HNS aggregate and the performance profile; per
    pair of scripts that ran the same envs, the probability of improvement."""
    groups = {}
    for r in runs:
        groups.setdefault((r["script"], r["env_id"]), []).append(r)
    rows = sorted(
        (aggregate_row(script, env_id, group, references, normalizer) for (script, env_id), group in groups.items()),
        key=lambda r: (r["script"], r["env_id"]),
    )
    aggregates = []
    for script in sorted({r["script"] for r in rows}):
        per_game = [np.array(r["hns"]["scores"]) for r in rows if r["script"] == script and "hns" in r]
        if per_game:
            pooled = np.concatenate(per_game)
            aggregates.append(
                {
                    "script": script,
                    "metric": "IQM of human-normalized score over games x seeds",
                    "games": len(per_game),
                    "runs": len(pooled),
                    "value": float(iqm(pooled)),
                    "ci": bootstrap_ci(per_game, iqm),
                    # Beside the IQM, the median and mean over games of each game's mean over seeds, as Atari
                    # papers print them (rliable's aggregate_median / aggregate_mean), with stratified CIs.
                    "median": float(np.median(task_means(per_game))),
                    "median_ci": bootstrap_task_means_ci(per_game, np.median),
                    "mean": float(np.mean(task_means(per_game))),
                    "mean_ci": bootstrap_task_means_ci(per_game, np.mean),
                }
            )
    return {
        "rows": rows,
        "aggregates": aggregates,
        "profiles": profiles(rows),
        "improvement": pairwise_improvement(rows),
    }


def verdict(row: dict) -> str:
    ref = row["reference"]
    if not row["seeds"]:
        return f"FAILED ({row['failed']}/{len(row['seeds_planned'])} runs)"
    prefix = f"FAILED {row['failed']}/{len(row['seeds_planned'])} runs; " if row["failed"] else ""
    if ref is None:
        return prefix + "no reference"
    short = ref.get("budget_steps") and isinstance(row["budget"], int) and row["budget"] < ref["budget_steps"]
    budget_note = f" (budget {fmt_steps(row['budget'])} < {fmt_steps(ref['budget_steps'])})" if short else ""
    if not row["judge"]:
        return prefix + "not judged" + budget_note
    passed = (row["iqm"] if ref["rule"] == "threshold" else row["iqm_ci"][1]) >= ref["score"]
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


# ==== Performance profiles and probability of improvement ====
def normalized_scores(row: dict):
    """(metric, scores) on the scale of the script's performance profile: human-normalized on
    Atari, else the fraction of the published score; None when the row has neither."""
    if "hns" in row:
        return "human-normalized score", np.array(row["hns"]["scores"])
    ref = row.get("reference")
    if row.get("scores") and ref is not None and ref["score"] > 0:
        return "score / published score", np.array(row["scores"]) / ref["score"]
    return None


def profiles(rows: list, taus=PROFILE_TAUS) -> list:
    """Per script: the fraction of runs above each tau of the normalized score, averaged over its
    envs (tasks), with stratified-bootstrap bands."""
    out = []
    for script in sorted({r["script"] for r in rows}):
        normalized = [(r["env_id"], *n) for r in rows if r["script"] == script and (n := normalized_scores(r))]
        if not normalized:
            continue
        metric = normalized[0][1]
        envs, tasks = zip(*[(env, s) for env, m, s in normalized if m == metric])
        lo, hi = performance_profile_bands(tasks, taus)
        out.append(
            {
                "script": script,
                "metric": metric,
                "envs": list(envs),
                "runs": int(sum(map(len, tasks))),
                "taus": list(taus),
                "fraction": performance_profile(tasks, taus).tolist(),
                "ci": [[float(a), float(b)] for a, b in zip(lo, hi)],
                "scores": [t.tolist() for t in tasks],
            }
        )
    return out


def pairwise_improvement(rows: list) -> list:
    """P(X > Y) with its CI for each pair of scripts over the envs both ran (raw scores, per env)."""
    by_script = {}
    for r in rows:
        if r["scores"]:
            by_script.setdefault(r["script"], {})[r["env_id"]] = r
    out = []
    for x, y in combinations(sorted(by_script), 2):
        envs = sorted(by_script[x].keys() & by_script[y].keys())
        if envs:
            xs, ys = [by_script[x][e]["scores"] for e in envs], [by_script[y][e]["scores"] for e in envs]
            out.append(
                {
                    "x": x,
                    "y": y,
                    "envs": envs,
                    "value": probability_of_improvement(xs, ys),
                    "ci": probability_of_improvement_ci(xs, ys),
                    "budgets": [[by_script[x][e]["budget"], by_script[y][e]["budget"]] for e in envs],
                }
            )
    return out


# ==== Regression check ====
def compare_results(current: dict, baseline: dict) -> list:
    """One entry per (script, env) of the baseline.

    Score: flagged when the 95% percentile-bootstrap CI of IQM(this run) - IQM(baseline), seeds of
    each resampled independently, lies entirely below 0 (its upper end < 0). An unchanged run gives
    a difference distribution centred on 0, so it passes; a drop is caught when it is large against
    the seed-to-seed spread: a uniform 20% drop is caught whenever the two bootstrap spreads together
    are narrower than 20% of the score (tests/test_benchmarks.py plants one).
    Steps/s: flagged when the mean over seeds is more than 15% below the baseline's.
    Rows run at a different budget are reported as not comparable, not compared. Each compared row
    also gets P(this run > baseline run) with its CI (reported, not a flag).
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
        elif not base.get("scores"):
            check["note"] = "baseline has no successful run"
        elif not row["scores"]:
            check["flags"].append("no successful run")
        elif row["budget"] != base["budget"]:
            check["note"] = f"not comparable: budget {fmt_steps(row['budget'])} vs baseline {fmt_steps(base['budget'])}"
        else:
            check_row(check, row, base)
    return checks


def check_row(check: dict, row: dict, base: dict) -> None:
    lo, hi = bootstrap_diff_ci(row["scores"], base["scores"])
    check.update(
        compared=True,
        iqm=row["iqm"],
        iqm_ci=row["iqm_ci"],
        base_iqm=base["iqm"],
        base_iqm_ci=base["iqm_ci"],
        diff_ci=(lo, hi),
        sps=row["sps"],
        base_sps=base["sps"],
        sps_change=row["sps"] / base["sps"] - 1.0,
        poi=probability_of_improvement(row["scores"], base["scores"]),
        poi_ci=probability_of_improvement_ci(row["scores"], base["scores"]),
    )
    if hi < 0:
        check["flags"].append("score dropped")
    if row["sps"] < (1.0 - SPS_DROP_LIMIT) * base["sps"]:
        check["flags"].append(f"steps/s {100 * check['sps_change']:+.0f}%")


def improvement_over_baseline(current: dict, baseline: dict, checks: list) -> list:
    """Per script: P(this run > baseline run) over the envs compared, runs resampled within each env."""
    now = {(r["script"], r["env_id"]): r["scores"] for r in current["rows"]}
    base = {(r["script"], r["env_id"]): r["scores"] for r in baseline["rows"]}
    out = []
    for script in sorted({c["script"] for c in checks if c.get("compared")}):
        keys = [(c["script"], c["env_id"]) for c in checks if c.get("compared") and c["script"] == script]
        xs, ys = [now[k] for k in keys], [base[k] for k in keys]
        out.append(
            {
                "script": script,
                "envs": [k[1] for k in keys],
                "value": probability_of_improvement(xs, ys),
                "ci": probability_of_improvement_ci(xs, ys),
            }
        )
    return out
