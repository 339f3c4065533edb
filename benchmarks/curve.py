"""Print a run's learning curve beside a published reference curve, in the reference's step bins.

    python benchmarks/curve.py runs/<run>                                   # the curve for its script and env
    python benchmarks/curve.py runs/<run> --reference sb3_zoo_dqn_breakout  # a named curve

Reads the run's TensorBoard `charts/episodic_return` (one point per finished training episode, at
the agent step it ended; raw whole-game scores on Atari), works on a run still in progress, and
prints, for each [lo, hi) bin of the reference (`[curves.*]` in reference_scores.toml) up to the
last one holding a game of this run: this run's mean score and game count, and the reference's.
The script and env come from the run's summary.json, else from its name (<env>__<script>__<seed>...).
"""

import argparse
import json
import sys
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dir", help="a run's folder, e.g. runs/BreakoutNoFrameskip-v4__dqn_atari__1__1700000000")
    p.add_argument(
        "--reference",
        metavar="NAME",
        help="a [curves.NAME] of reference_scores.toml (default: the one for the run's script and env)",
    )
    args = p.parse_args(argv)
    references, run_dir = load_references(), Path(args.run_dir)
    curves = references.get("curves", {})
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
