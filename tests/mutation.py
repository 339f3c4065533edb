"""Mutation check: plant each classic RL bug into a copy of its script and watch the tests catch it.

    python tests/mutation.py                          # every mutant of every script (slow: tens of minutes)
    python tests/mutation.py --script dqn_cartpole.py # one script's mutants
    python tests/mutation.py --bug "ratio clip"       # mutants whose bug name contains the text
    python tests/mutation.py --list                   # the table of planted bugs, without running anything

The bugs are data, one file per script family in tests/mutants/*.toml: `scripts` (where each mutant is
planted, one script at a time), `tests` (the test files run against it) and `[[mutant]]` entries with
`bug` (the bug class), `old` (text that occurs exactly once in the script) and `new` (the buggy text).
Each mutant runs in a fresh copy of the repository with `pytest -x`; it is killed when a test fails and
survives when every test passes. Prints one line per planted bug and exits 1 unless every one is killed (a mutant whose `old` text
no longer occurs once is stale; one that stops pytest from collecting the tests is invalid).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTANTS_DIR = ROOT / "tests" / "mutants"
COPIED = ("*.py", "pytest.ini", "tests", "benchmarks")


@dataclass(frozen=True)
class Mutant:
    script: str
    bug: str
    old: str
    new: str
    tests: tuple


def load_mutants(directory: Path = MUTANTS_DIR) -> list:
    """Every (script, mutant) pair of the TOML files, in file order."""
    mutants = []
    for path in sorted(directory.glob("*.toml")):
        spec = tomllib.loads(path.read_text())
        for script in spec["scripts"]:
            for m in spec["mutant"]:
                mutants.append(Mutant(script, m["bug"], m["old"], m["new"], tuple(spec["tests"])))
    return mutants


def apply(mutant: Mutant, source: str) -> str:
    """The script's source with the bug planted; ValueError unless `old` occurs exactly once."""
    count = source.count(mutant.old)
    if count != 1:
        raise ValueError(f"{mutant.script}: {mutant.bug!r}: `old` occurs {count} times (must be once)")
    if mutant.new == mutant.old:
        raise ValueError(f"{mutant.script}: {mutant.bug!r}: `new` equals `old`, nothing is planted")
    start = source.index(mutant.old)
    if mutant.old[:1] in (" ", "\t") and start > 0 and source[start - 1] in (" ", "\t"):
        # Cutting part of an indentation re-indents the next line: a second, unintended bug.
        raise ValueError(f"{mutant.script}: {mutant.bug!r}: `old` begins inside a line's indentation")
    return source.replace(mutant.old, mutant.new)


def run_mutant(mutant: Mutant, timeout: float) -> tuple:
    """(verdict, detail, seconds): killed (by the first failing test), survived, stale or invalid."""
    start = time.time()
    try:
        planted = apply(mutant, (ROOT / mutant.script).read_text())
    except ValueError as e:
        return "stale", str(e), 0.0
    with tempfile.TemporaryDirectory(prefix="mutant_") as tmp:
        copy = Path(tmp) / "repo"
        copy.mkdir()
        for pattern in COPIED:
            for src in ROOT.glob(pattern):
                if src.is_dir():
                    shutil.copytree(src, copy / src.name, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(src, copy / src.name)
        (copy / mutant.script).write_text(planted)
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests]
        try:
            proc = subprocess.run(
                cmd,
                cwd=copy,
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
            )
        except subprocess.TimeoutExpired:
            return "killed", f"timeout: the tests ran past {timeout:.0f} s", time.time() - start
    seconds = time.time() - start
    if proc.returncode == 0:
        return "survived", "", seconds
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, flags=re.M)
    if proc.returncode == 1 and failed:
        return "killed", failed[0].split("::")[-1], seconds
    # Other exit codes mean pytest never ran the tests (a collection error, say): a mutant that breaks
    # the import is not a realistic bug, so it kills nothing and is reported as invalid.
    return "invalid", f"pytest exit {proc.returncode}: {proc.stdout.strip().splitlines()[-1:]}", seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--script", help="only this script's mutants (e.g. dqn_cartpole.py)")
    parser.add_argument("--bug", help="only mutants whose bug name contains this text")
    parser.add_argument(
        "--workers", type=int, default=1, help="mutants run at once (each pytest uses the cores too; 1 on 2 cores)"
    )
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per mutant before it counts as killed")
    parser.add_argument("--list", action="store_true", help="print the planted bugs and exit")
    args = parser.parse_args()

    mutants = [
        m
        for m in load_mutants()
        if (args.script is None or m.script == args.script) and (args.bug is None or args.bug.lower() in m.bug.lower())
    ]
    if not mutants:
        print("error: no mutant matches --script/--bug; see python tests/mutation.py --list", file=sys.stderr)
        return 2
    width = max(len(m.script) for m in mutants)
    if args.list:
        for m in mutants:
            print(f"{m.script:<{width}}  {m.bug}")
        return 0

    print(f"{len(mutants)} mutants, {args.workers} at a time", flush=True)
    start = time.time()
    verdicts = []

    def one(m: Mutant):
        verdict, detail, seconds = run_mutant(m, args.timeout)
        print(f"{verdict:<8}  {m.script:<{width}}  {m.bug:<55}  {seconds:5.0f} s  {detail}", flush=True)
        return verdict

    with ThreadPoolExecutor(args.workers) as pool:
        verdicts = list(pool.map(one, mutants))
    bad = sum(v != "killed" for v in verdicts)
    print(
        f"{len(verdicts) - bad} of {len(verdicts)} killed, {verdicts.count('survived')} survived, "
        f"{verdicts.count('stale')} stale, {verdicts.count('invalid')} invalid, in {time.time() - start:.0f} s"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
