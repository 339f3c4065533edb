"""The benchmark report: report.md (one section per part, each built by its own function below) and
the plots it shows (learning curves per script and env, a performance profile per script)."""

from pathlib import Path

import numpy as np
from launch import fmt_duration
from results import RULES, SPS_DROP_LIMIT, fmt_steps
from stats import BOOTSTRAP_REPS, performance_profile, performance_profile_bands


def fmt_ci(value, ci, digits=1) -> str:
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _digits(row) -> int:
    scale = max(abs(s) for s in row["scores"]) if row["scores"] else 0
    return 0 if scale >= 1000 else 1 if scale >= 10 else 2


def _table(head: list, rows: list) -> list:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


# ==== Plots ====
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(out: Path, results: dict, baseline_profiles=()) -> dict:
    """{(script, env) or (script, 'profile'): path} of the plots written under out/plots."""
    (out / "plots").mkdir(exist_ok=True)
    paths = {}
    for row in results["rows"]:
        runs = [
            r
            for r in results["runs"]
            if r["script"] == row["script"] and r["env_id"] == row["env_id"] and r["status"] == "ok"
        ]
        if runs:
            name = f"plots/{Path(row['script']).stem}__{row['env_id'].replace('/', '-')}.png"
            plot_curves(out / name, row, runs)
            paths[(row["script"], row["env_id"])] = name
    base = {p["script"]: p for p in baseline_profiles}
    for profile in results.get("profiles", []):
        name = f"plots/{Path(profile['script']).stem}__profile.png"
        plot_profile(out / name, profile, base.get(profile["script"]))
        paths[(profile["script"], "profile")] = name
    return paths


def plot_curves(path: Path, row: dict, runs: list) -> None:
    """Learning curves over steps and over wall time, with the reference line."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, r in enumerate(sorted(runs, key=lambda r: r["seed"])):
        color = f"C{i % 10}"
        hist = [p for p in r["eval_history"] if p.get("step") is not None]
        if r["train_curve"]:
            steps, walls, values = zip(*r["train_curve"])
            axes[0].plot(steps, values, color=color, alpha=0.25, lw=0.8)
            axes[1].plot(walls, values, color=color, alpha=0.25, lw=0.8)
        if hist:
            axes[0].plot(
                [p["step"] for p in hist],
                [p["mean"] for p in hist],
                "o-",
                color=color,
                ms=3,
                label=f"seed {r['seed']} eval",
            )
            axes[1].plot([p["wall_time_s"] for p in hist], [p["mean"] for p in hist], "o-", color=color, ms=3)
    ref = row["reference"]
    for ax in axes:
        if ref is not None:
            ax.axhline(
                ref["score"],
                color="k",
                ls="--",
                lw=1,
                label=f"{ref['name']} {ref['score']:g}"
                + (f" ({ref['budget_note']})" if ref.get("budget_note") else ""),
            )
        ax.grid(alpha=0.3)
        ax.set_ylabel("episodic return")
    axes[0].set_xlabel("environment steps")
    axes[1].set_xlabel("wall time (s)")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{row['script']} on {row['env_id']} (eval: markers; training episodes: faint)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_profile(path: Path, profile: dict, baseline=None) -> None:
    """Fraction of runs above tau on a fine grid of tau, with its bootstrap band (and the baseline's)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    curves = [("these runs", profile, "C0")] + ([("baseline", baseline, "C1")] if baseline else [])
    top = max(max(map(max, p["scores"])) for _, p, _ in curves)
    taus = np.linspace(min(0.0, min(min(map(min, p["scores"])) for _, p, _ in curves)), max(top, 1.0) * 1.05, 200)
    for label, p, color in curves:
        tasks = [np.array(s) for s in p["scores"]]
        lo, hi = performance_profile_bands(tasks, taus, reps=2000)
        ax.plot(taus, performance_profile(tasks, taus), color=color, label=label)
        ax.fill_between(taus, lo, hi, color=color, alpha=0.2)
    ax.axvline(1.0, color="k", ls="--", lw=1)
    ax.set_xlabel(f"{profile['metric']} (tau)")
    ax.set_ylabel("fraction of runs > tau")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{profile['script']}: {profile['runs']} runs on {len(profile['envs'])} env(s)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ==== report.md ====
def render_report(results: dict, plots: dict, comparison=None) -> str:
    rows = results["rows"]
    ref_ids = {}
    for row in rows:
        if row["reference"] is not None:
            ref_ids.setdefault(row["reference"]["table"], len(ref_ids) + 1)
    lines = header_section(results, comparison)
    for script in sorted({r["script"] for r in rows}):
        lines += script_section(script, results, plots, ref_ids)
    lines += profile_section(results, plots, comparison)
    lines += improvement_section(results)
    lines += failed_section(results["runs"])
    lines += comparison_section(comparison)
    lines += references_section(results, ref_ids)
    lines += method_section()
    return "\n".join(lines)


def header_section(results: dict, comparison) -> list:
    meta, runs = results["meta"], results["runs"]
    n_failed = sum(r["status"] != "ok" for r in runs)
    planted = (
        [
            f"- **planted drop**: every score lowered by {100 * meta['planted_drop']:g}% of its magnitude "
            "(--plant-drop), to test the regression check; these are not measured scores"
        ]
        if meta.get("planted_drop")
        else []
    )
    flagged = (
        (
            f"; regression check against `{comparison['baseline']}`: "
            f"{sum(bool(c['flags']) for c in comparison['checks'])} flagged"
        )
        if comparison
        else ""
    )
    return [
        f"# Benchmark report: suite `{meta['suite']}`",
        "",
        f"- created {meta['created']} on {meta['host']}; {meta['workers']} worker(s)"
        + (f" on {meta['launcher']}" if meta.get("launcher") else "")
        + f"; git {meta.get('git') or 'n/a'}",
        f"- command: `{meta['command']}`",
        *planted,
        f"- {len(runs)} runs: {len(runs) - n_failed} ok, {n_failed} failed" + flagged,
        "",
        "Score = mean return of each run's final evaluation (summary.json `final_eval.mean`); "
        "mean and IQM over seeds with 95% percentile-bootstrap CIs (see Method). "
        "Reference numbers: see References.",
        "",
    ]


def _reference_text(ref, ref_ids: dict) -> str:
    if ref is None:
        return "none published"
    text = f"{ref['score']:g}" + (f" ± {ref['std']:g}" if "std" in ref else "")
    text += f" ({ref['name']}" + (f", {ref['budget_note']}" if ref.get("budget_note") else "")
    return text + f") [{ref_ids[ref['table']]}]"


def _row_cells(row: dict, atari: bool, ref_ids: dict) -> list:
    seeds = f"{len(row['seeds'])}/{len(row['seeds_planned'])}"
    ref_text = _reference_text(row["reference"], ref_ids)
    if not row["seeds"]:
        return [row["env_id"], seeds, "—", "—", "—", ref_text] + ["—"] * (3 if atari else 2) + [row["verdict"]]
    d = _digits(row)
    cells = [
        row["env_id"],
        seeds,
        fmt_steps(row["budget"]),
        fmt_ci(row["mean"], row["mean_ci"], d),
        fmt_ci(row["iqm"], row["iqm_ci"], d),
        ref_text,
    ]
    if atari:
        h = row.get("hns")
        hns = fmt_ci(h["iqm"], h["iqm_ci"], 2) + (f" ({h['reference']:.2f})" if "reference" in h else "") if h else "—"
        cells.append(hns)
    return cells + [f"{row['sps']:,.0f}", fmt_duration(row["wall_time_s"]), row["verdict"]]


def script_section(script: str, results: dict, plots: dict, ref_ids: dict) -> list:
    srows = [r for r in results["rows"] if r["script"] == script]
    atari = any(r["family"] == "atari" for r in srows)
    head = ["env", "seeds ok", "budget (steps)", "mean [95% CI]", "IQM [95% CI]", "reference"]
    head += ["HNS IQM [95% CI] (reference)"] if atari else []
    head += ["steps/s", "wall time", "pass/fail"]
    lines = [f"## {script}", ""] + _table(head, [_row_cells(row, atari, ref_ids) for row in srows])
    for agg in results["aggregates"]:
        if agg["script"] == script:
            lines += [
                "",
                f"All games: {agg['metric']}: **{fmt_ci(agg['value'], agg['ci'], 2)}** "
                f"({agg['games']} games, {agg['runs']} runs, stratified bootstrap)"
                + (
                    f"; median {fmt_ci(agg['median'], agg['median_ci'], 2)} and mean "
                    f"{fmt_ci(agg['mean'], agg['mean_ci'], 2)} over games of each game's mean."
                    if "median" in agg
                    else "."
                ),
            ]
    lines.append("")
    for row in srows:
        if (script, row["env_id"]) in plots:
            lines += [f"![{script} {row['env_id']}]({plots[(script, row['env_id'])]})", ""]
    return lines


def profile_section(results: dict, plots: dict, comparison) -> list:
    profiles = results.get("profiles", [])
    if not profiles:
        return []
    base = {p["script"]: p for p in (comparison or {}).get("profiles", [])}
    taus = profiles[0]["taus"]
    table = []
    for p in profiles:
        what = f"{p['metric']}, {len(p['envs'])} env(s), {p['runs']} runs"
        table.append([p["script"], what] + [fmt_ci(f, ci, 2) for f, ci in zip(p["fraction"], p["ci"])])
        b = base.get(p["script"])
        if b is not None and b["metric"] == p["metric"] and b["taus"] == p["taus"]:
            table.append(
                [f"{p['script']} (baseline)", f"{len(b['envs'])} env(s), {b['runs']} runs"]
                + [fmt_ci(f, ci, 2) for f, ci in zip(b["fraction"], b["ci"])]
            )
    lines = [
        "## Performance profiles",
        "",
        "Fraction of runs whose normalized score is above tau [95% CI], averaged over the script's envs "
        "(Agarwal et al. 2021; bands: stratified bootstrap). Normalized: human-normalized score on Atari "
        "(tau = 1 is the human tester), else score / published score (tau = 1 is the published number)."
        + (" Baseline rows: the same from the --compare baseline." if base else ""),
        "",
    ]
    lines += _table(["script", "normalized by, tasks, runs"] + [f"tau = {t:g}" for t in taus], table) + [""]
    for p in profiles:
        if (p["script"], "profile") in plots:
            lines += [f"![{p['script']} performance profile]({plots[(p['script'], 'profile')]})", ""]
    return lines


def improvement_section(results: dict) -> list:
    pairs = results.get("improvement", [])
    if not pairs:
        return []
    table = [
        [
            p["x"],
            p["y"],
            ", ".join(p["envs"]),
            fmt_ci(p["value"], p["ci"], 2),
            "; ".join(f"{fmt_steps(a)} vs {fmt_steps(b)}" for a, b in p["budgets"]),
        ]
        for p in pairs
    ]
    head = ["X", "Y", "envs", "P(X > Y) [95% CI]", "budgets (X vs Y)"]
    return (
        [
            "## Probability of improvement",
            "",
            "P(X > Y): the probability that a run of X scores higher than a run of Y on the same env (ties "
            "count half), averaged over the envs both ran, with a 95% bootstrap CI (runs of X and of Y "
            "resampled independently within each env). 0.5 is no difference; at different budgets it "
            "compares the budgets too.",
            "",
        ]
        + _table(head, table)
        + [""]
    )


def failed_section(runs: list) -> list:
    failed = [r for r in runs if r["status"] != "ok"]
    if not failed:
        return []
    table = [
        [
            r["run_name"],
            r["script"],
            r["env_id"],
            str(r["seed"]),
            str(r["reason"]).replace("|", "/"),
            r.get("log") or "—",
        ]
        for r in failed
    ]
    return ["## Failed runs", ""] + _table(["run", "script", "env", "seed", "reason", "log"], table) + [""]


def _check_cells(c: dict) -> list:
    if not c.get("compared"):
        result = "FLAGGED: " + ", ".join(c["flags"]) if c["flags"] else c["note"]
        return [c["script"], c["env_id"]] + ["—"] * 6 + [result]
    return [
        c["script"],
        c["env_id"],
        fmt_ci(c["base_iqm"], c["base_iqm_ci"], 2),
        fmt_ci(c["iqm"], c["iqm_ci"], 2),
        f"[{c['diff_ci'][0]:.2f}, {c['diff_ci'][1]:.2f}]",
        fmt_ci(c["poi"], c["poi_ci"], 2),
        f"{c['base_sps']:,.0f}",
        f"{c['sps']:,.0f} ({100 * c['sps_change']:+.0f}%)",
        "FLAGGED: " + ", ".join(c["flags"]) if c["flags"] else "ok",
    ]


def comparison_section(comparison) -> list:
    if not comparison:
        return []
    head = [
        "script",
        "env",
        "baseline IQM [CI]",
        "this IQM [CI]",
        "Δ IQM 95% CI",
        "P(this > baseline) [CI]",
        "baseline steps/s",
        "steps/s (change)",
        "result",
    ]
    lines = [
        f"## Regression check against `{comparison['baseline']}`",
        "",
        "Flagged: the 95% bootstrap CI of IQM(this) − IQM(baseline) lies entirely below 0, or "
        f"steps/s more than {100 * SPS_DROP_LIMIT:.0f}% below the baseline's. P(this > baseline): "
        "probability of improvement (see that section), reported, not a flag.",
        "",
    ]
    lines += _table(head, [_check_cells(c) for c in comparison["checks"]]) + [""]
    for imp in comparison.get("improvement", []):
        lines.append(
            f"- {imp['script']} over {len(imp['envs'])} env(s): P(this > baseline) = "
            f"**{fmt_ci(imp['value'], imp['ci'], 2)}**"
        )
    return lines + ([""] if comparison.get("improvement") else [])


def references_section(results: dict, ref_ids: dict) -> list:
    if not ref_ids:
        return []
    lines = ["## References", ""]
    tables = {r["reference"]["table"]: r["reference"] for r in results["rows"] if r["reference"] is not None}
    for table_id, n in sorted(ref_ids.items(), key=lambda kv: kv[1]):
        ref = tables[table_id]
        lines.append(
            f"{n}. **{ref['name']}**: {ref['source'].rstrip('.')}. Protocol: {ref['protocol'].rstrip('.')}. "
            f"Pass rule: {RULES[ref['rule']]}."
        )
    if any("hns" in r for r in results["rows"]):
        norm = results.get("normalizer") or {}
        lines.append(
            f"{len(ref_ids) + 1}. **Human-normalized score** (HNS) = (score − random) / (human − random), "
            f"human and random scores from the **{norm.get('name', '?')}** table: {norm.get('source', '?')}. "
            f"Protocol: {norm.get('protocol', '?')}. {norm.get('note', '')}".rstrip()
        )
    return lines + [""]


def method_section() -> list:
    return [
        "## Method",
        "",
        "- Each run's score is its own final evaluation (episodes and policy as the script's "
        "summary.json `final_eval` and `args` say); the reference protocols above can differ "
        "(e.g. epsilon, no-op starts, or training-episode returns), so a pass/fail is a sanity "
        "check, not a replication claim.",
        '- Statistics as Agarwal et al. 2021 ("Deep RL at the Edge of the Statistical Precipice") define '
        "them, computed in numpy by benchmarks/stats.py (rliable itself does not import beside the pinned "
        "stack; the module says why and how its statistics are checked).",
        "- IQM: mean of the runs left after dropping int(n/4) lowest and highest (scipy "
        "`trim_mean(x, 0.25)`, as rliable); with fewer than 4 seeds it equals the mean.",
        f"- 95% CIs: percentile bootstrap over seeds, {BOOTSTRAP_REPS:,} resamples, fixed bootstrap "
        "seed; CIs over several envs (all-games HNS, performance profiles, probability of improvement) "
        "resample seeds within each env (stratified). With few seeds the CIs are narrow and optimistic "
        "(one seed gives a zero-width CI).",
        "- A run failed if it exited non-zero, timed out, wrote no or an incomplete summary.json, "
        "or had NaN in its summary or TensorBoard scalars.",
        "- Entries not judged (small budgets) print the reference for context only.",
        "",
    ]
