"""Print a run's learning curve beside a published reference curve, in the reference's step bins, or draw it.

    python benchmarks/curve.py runs/<run>                                   # the curve for its script and env
    python benchmarks/curve.py runs/<run> --reference sb3_zoo_dqn_breakout  # a named curve
    python benchmarks/curve.py runs/<run> --plot curve.png                  # the same table, and a PNG of it
    python benchmarks/curve.py --from-toml docs/curves/dqn_atari_breakout.toml --plot docs/curves/dqn_atari_breakout.png

Reads the run's TensorBoard `charts/episodic_return` (one point per finished training episode, at
the agent step it ended; raw whole-game scores on Atari), works on a run still in progress, and
prints, for each [lo, hi) bin of the reference (`[curves.*]` in reference_scores.toml) up to the
last one holding a game of this run: this run's mean score and game count, and the reference's.
The script and env come from the run's summary.json, else from its name (<env>__<script>__<seed>...).
`--plot OUT.png` also draws both curves (each bin's mean at the bin's middle).

`--from-toml FILE` draws a curve recorded as numbers instead of a run folder: the docs' figures, whose
runs are gone (docs/curves/*.toml: the commands that produced the numbers, the series, and optionally a
`reference` curve by its [curves.*] name and `hline`s such as a solved threshold).
"""

import argparse
import json
import math
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
from references import env_family, load_references
from results import fmt_steps, read_scalars


def fail(message: str) -> None:
    """Bad input: one line naming the problem and the fix, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def find_curve(references: dict, script: str, env_id: str):
    """(name, curve) of the reference curve for this script on this env (same game, any spelling of
    its id), or None."""
    for name, curve in references.get("curves", {}).items():
        if script in curve["scripts"] and env_family(curve["env_id"]) == env_family(env_id):
            return name, curve
    return None


def curve_bins(curve: dict) -> list:
    """A curve's [lo, hi) step bins: listed (`bins`), or of width `bin_steps` from 0, one per mean."""
    if "bins" in curve:
        return curve["bins"]
    width = curve["bin_steps"]
    return [[i * width, (i + 1) * width] for i in range(len(curve["mean_score"]))]


def compare_with_curve(points, curve: dict) -> dict:
    """This run's (step, score) points beside the reference's, per [lo, hi) bin of the reference, up
    to the last bin holding one of this run's points (earlier empty bins: mean None, 0 games)."""
    steps, scores = np.array([p[0] for p in points], dtype=np.int64), np.array([p[1] for p in points], dtype=np.float64)
    rows = []
    for (lo, hi), ref_mean, ref_games in zip(curve_bins(curve), curve["mean_score"], curve["games"]):
        inside = scores[(steps >= lo) & (steps < hi)]
        rows.append(
            {
                "bin": [lo, hi],
                "this_run": round(float(inside.mean()), 2) if len(inside) else None,
                "this_run_games": len(inside),
                "reference": ref_mean,
                "reference_games": ref_games,
            }
        )
    while rows and not rows[-1]["this_run_games"]:
        rows.pop()
    return {"reference": curve["name"], "source": curve["source"], "protocol": curve["protocol"], "rows": rows}


def reference_comparison(points, script: str, env_id: str, references=None):
    """compare_with_curve against the reference curve of this script and env, or None if there is none."""
    found = find_curve(references or load_references(), script, env_id)
    return compare_with_curve(points, found[1]) if found else None


def run_identity(run_dir: Path) -> tuple:
    """(script, env_id) of a run: from its summary.json, else from the name the scripts give it."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        if "script" in s and "env_id" in s:
            return s["script"], s["env_id"]
    parts = run_dir.name.split("__")
    if len(parts) < 2:
        return None, None
    env_id = "ALE/" + parts[0][4:] if parts[0].startswith("ALE-") else parts[0]  # run names write "/" as "-"
    return parts[1] + ".py", env_id


def format_table(comparison: dict) -> str:
    lines = [f"{'steps':>17}  {'this run':>9} {'games':>6}  {'reference':>9} {'games':>6}"]
    for r in comparison["rows"]:
        lo, hi = r["bin"]
        mean = "—" if r["this_run"] is None else f"{r['this_run']:.2f}"
        lines.append(
            f"{fmt_steps(lo) + '-' + fmt_steps(hi):>17}  {mean:>9} {r['this_run_games']:>6}  "
            f"{r['reference']:>9.2f} {r['reference_games']:>6}"
        )
    return "\n".join(lines)


# ==== Plots ====
def binned_points(bins: list, means: list) -> tuple:
    """(x, y) of a binned curve: each bin's mean at its middle; bins without a mean (None) left out."""
    kept = [((lo + hi) / 2, m) for (lo, hi), m in zip(bins, means) if m is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def plot_curves(path: Path, figure: dict) -> None:
    """Draw a figure: {title, commands, xlabel, ylabel, xaxis ('steps' or 'plain'), series: [{label,
    x, y, markers_only?, color?, linestyle?}], reference: {label, x, y} or None, hlines: [{value, label}]} to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(8, 4.8))
    ref = figure.get("reference")
    if ref:
        ax.plot(ref["x"], ref["y"], color="0.25", linewidth=5, alpha=0.35, marker="s", markersize=5, label=ref["label"])
    for s in figure["series"]:
        style = (
            {"linestyle": "none"} if s.get("markers_only") else {"linewidth": 1.6, "linestyle": s.get("linestyle", "-")}
        )
        ax.plot(s["x"], s["y"], marker="o", markersize=4, label=s["label"], color=s.get("color"), **style)
    for h in figure.get("hlines", []):
        ax.axhline(h["value"], color="0.4", linestyle="--", linewidth=1)
        ax.annotate(
            h["label"],
            (0, h["value"]),
            xycoords=("axes fraction", "data"),
            xytext=(4, 3),
            textcoords="offset points",
            fontsize=8,
            color="0.3",
        )
    if figure.get("xaxis", "steps") == "steps":
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_steps(int(v)) if v >= 0 else ""))
    ax.set_xlabel(figure.get("xlabel", "agent steps"))
    ax.set_ylabel(figure.get("ylabel", "mean raw score of the training games per bin"))
    ax.set_title(textwrap.fill(figure["title"], 95), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    caption = "\n".join(textwrap.fill(c, 130, subsequent_indent="    ") for c in figure["commands"])
    fig.text(0.01, 0.01, caption, fontsize=6, family="monospace", va="bottom", ha="left", color="0.3")
    lines = caption.count("\n") + 1
    fig.tight_layout(rect=(0, min(0.4, 0.02 + 0.028 * lines), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def run_figure(run_dir: Path, identity: str, name: str, curve: dict, comparison: dict, out: Path) -> dict:
    """The figure of a live run beside its reference curve: both binned in the reference's bins."""
    bins = [r["bin"] for r in comparison["rows"]]
    return {
        "title": f"{run_dir.name}{identity}",
        "commands": [f"python benchmarks/curve.py {run_dir} --reference {name} --plot {out}"],
        "series": [
            dict(zip(("x", "y"), binned_points(bins, [r["this_run"] for r in comparison["rows"]])), label=run_dir.name)
        ],
        "reference": dict(
            zip(("x", "y"), binned_points(bins, [r["reference"] for r in comparison["rows"]])), label=curve["name"]
        ),
    }


def _numbers(where: str, values) -> list:
    """values, checked to be a non-empty list of finite numbers (bad input: one line, exit 2)."""
    if not isinstance(values, list) or not values:
        fail(f"{where}: expected a non-empty list of numbers")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            fail(f"{where}: {v!r} is not a finite number")
    return values


LINESTYLES = ("-", "--", ":", "-.")


def toml_figure(path: Path, references: dict) -> dict:
    """The figure recorded in a docs/curves/*.toml file, checked (bad input: one line, exit 2)."""
    from matplotlib.colors import is_color_like

    try:
        data = tomllib.loads(path.read_text())
    except OSError:
        fail(f"--from-toml {path}: no such file; pass one of docs/curves/*.toml")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        fail(f"--from-toml {path}: not valid TOML ({str(e).splitlines()[0]}); fix the file")
    for key in ("title", "commands", "series"):
        if key not in data:
            fail(f"{path}: missing `{key}` (a figure needs title, commands and at least one [[series]])")
    commands = data["commands"]
    if not isinstance(commands, list) or not commands or not all(isinstance(c, str) and c for c in commands):
        fail(f"{path}: `commands` must list the commands that produced the numbers")
    if data.get("xaxis", "steps") not in ("steps", "plain"):
        fail(f'{path}: xaxis = {data["xaxis"]!r}; use "steps" or "plain"')
    if not isinstance(data["series"], list) or not data["series"]:
        fail(f"{path}: `series` must be one or more [[series]] tables")
    figure = {k: data[k] for k in ("title", "commands", "xlabel", "ylabel", "xaxis") if k in data}
    figure["series"], last_step = [], 0
    for i, s in enumerate(data["series"]):
        where = f"{path}: series {i + 1} ({s.get('label', 'no label')})"
        if "label" not in s:
            fail(f"{where}: missing `label`")
        if "mean_score" in s:
            means = _numbers(f"{where} mean_score", s["mean_score"])
            if "bins" in s:
                bins = s["bins"]
                if not isinstance(bins, list) or not all(
                    isinstance(b, list) and len(b) == 2 and b[0] < b[1] for b in bins
                ):
                    fail(f"{where}: `bins` must be [lo, hi] pairs with lo < hi")
            elif isinstance(s.get("bin_steps"), int) and s["bin_steps"] > 0:
                bins = curve_bins({"bin_steps": s["bin_steps"], "mean_score": means})
            else:
                fail(f"{where}: a binned series needs `bins` or a positive `bin_steps`")
            if len(bins) != len(means):
                fail(f"{where}: {len(bins)} bins but {len(means)} means")
            x, y = binned_points(bins, means)
            last_step = max(last_step, bins[-1][1])
        elif "x" in s and "y" in s:
            x, y = _numbers(f"{where} x", s["x"]), _numbers(f"{where} y", s["y"])
            if len(x) != len(y):
                fail(f"{where}: {len(x)} x values but {len(y)} y values")
            last_step = max(last_step, max(x))
        else:
            fail(f"{where}: give `mean_score` with `bins` or `bin_steps`, or `x` and `y`")
        if "color" in s and not is_color_like(s["color"]):
            fail(f'{where}: color = {s["color"]!r} is not a matplotlib color (try "C0" or "tab:blue")')
        if s.get("linestyle", "-") not in LINESTYLES:
            fail(f"{where}: linestyle = {s['linestyle']!r}; use one of {', '.join(LINESTYLES)}")
        keep = {k: s[k] for k in ("color", "linestyle") if k in s}
        figure["series"].append(
            {"label": s["label"], "x": x, "y": y, "markers_only": bool(s.get("markers_only")), **keep}
        )
    name = data.get("reference")
    if name is not None:
        curves = references.get("curves", {})
        if name not in curves:
            fail(f"{path}: reference = {name!r} is unknown; choose one of {', '.join(curves)}")
        ref = curves[name]
        kept = [(b, m) for b, m in zip(curve_bins(ref), ref["mean_score"]) if b[0] < last_step]
        x, y = binned_points([b for b, _ in kept], [m for _, m in kept])
        figure["reference"] = {"label": f"{ref['name']} (reference)", "x": x, "y": y}
    hlines = data.get("hline", [])
    for h in hlines:
        if not isinstance(h, dict) or "label" not in h or "value" not in h:
            fail(f"{path}: each [[hline]] needs `value` and `label`")
        _numbers(f"{path}: hline {h['label']}", [h["value"]])
    figure["hlines"] = hlines
    return figure


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "run_dir", nargs="?", help="a run's folder, e.g. runs/BreakoutNoFrameskip-v4__dqn_atari__1__1700000000"
    )
    p.add_argument(
        "--reference",
        metavar="NAME",
        help="a [curves.NAME] of reference_scores.toml (default: the one for the run's script and env)",
    )
    p.add_argument("--plot", metavar="OUT.png", help="also draw the curves into this PNG file")
    p.add_argument("--from-toml", metavar="FILE", help="draw a curve recorded as numbers (docs/curves/*.toml)")
    args = p.parse_args(argv)
    references = load_references()
    curves = references.get("curves", {})
    if args.plot is not None and not args.plot.lower().endswith(".png"):
        fail(f"--plot {args.plot}: the plot is a PNG; pass a file name ending in .png")
    if args.from_toml is not None:
        if args.run_dir is not None or args.reference is not None:
            fail("--from-toml draws the file's own curves; pass it without a run folder or --reference")
        if args.plot is None:
            fail(f"--from-toml {args.from_toml}: pass --plot OUT.png, the PNG to draw")
        plot_curves(Path(args.plot), toml_figure(Path(args.from_toml), references))
        print(f"wrote {args.plot}")
        return 0
    if args.run_dir is None:
        fail("pass a run folder (runs/<run-name>) or --from-toml FILE")
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        fail(f"{run_dir}: no such run folder; pass runs/<run-name>")
    if args.reference is not None and args.reference not in curves:
        fail(f"--reference {args.reference}: unknown; choose one of {', '.join(curves)}")
    script, env_id = run_identity(run_dir)
    found = (args.reference, curves[args.reference]) if args.reference else find_curve(references, script, env_id)
    if found is None:
        what = f"{script} on {env_id}" if script else f"{run_dir} (no summary.json yet and not a default run name)"
        fail(f"no reference curve for {what}; pass --reference NAME, one of {', '.join(curves)}")
    points = [(step, value) for step, _, value in read_scalars(run_dir).get("charts/episodic_return", [])]
    if not points:
        fail(f"{run_dir} has no charts/episodic_return yet (no training episode finished); try again later")
    name, curve = found
    comparison = compare_with_curve(points, curve)
    identity = f" ({script} on {env_id})" if script else ""
    print(f"{run_dir}{identity}: {len(points)} training games, last at step {points[-1][0]:,}")
    print(f"reference [curves.{name}]: {curve['name']}\n  source: {curve['source']}\n  protocol: {curve['protocol']}")
    print("mean raw score of the training games ending in each bin of agent steps:")
    print(format_table(comparison))
    if args.plot is not None:
        plot_curves(Path(args.plot), run_figure(run_dir, identity, name, curve, comparison, args.plot))
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
