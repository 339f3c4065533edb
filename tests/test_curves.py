"""Tests of the learning-curve pictures (`benchmarks/curve.py --plot`, `--from-toml`): a live
TensorBoard run and a recorded toml both become a PNG, bad input stops with one line and exit 2,
every recorded curve under docs/curves/ still draws, and the README and docs link only to files that
exist."""

import re
import tomllib
from pathlib import Path

import curve  # benchmarks/curve.py (conftest puts benchmarks/ on sys.path)
import pytest
from conftest import ROOT, assert_bad_input

CURVES = ROOT / "docs" / "curves"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def _fake_run(run_dir, points):
    """A run folder with TensorBoard training returns as the scripts log them (SummaryWriter)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir))
    for step, value in points:
        writer.add_scalar("charts/episodic_return", value, step)
    writer.close()


RECORDED = """
title = "a recorded curve"
commands = ["python dqn_atari.py --seed 1 --run-name r", "python benchmarks/curve.py runs/r"]
reference = "sb3_zoo_dqn_breakout"

[[hline]]
value = 3.0
label = "a threshold"

[[series]]
label = "binned, fixed width"
bin_steps = 100_000
mean_score = [1.0, 2.0, 4.5]
games = [10, 9, 8]

[[series]]
label = "binned, listed bins"
bins = [[0, 50_000], [50_000, 250_000]]
mean_score = [1.5, 2.5]
color = "C3"
linestyle = "--"

[[series]]
label = "points"
markers_only = true
x = [100_000, 200_000]
y = [2.0, 3.0]
"""


def test_live_run_plot(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "BreakoutNoFrameskip-v4__dqn_atari__1__1700000000"
    _fake_run(run_dir, [(step, step / 100_000) for step in range(0, 350_000, 5_000)])
    out = tmp_path / "plots" / "curve.png"  # a folder that does not exist yet
    assert curve.main([str(run_dir), "--plot", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"wrote {out}" and lines[-2].split()[0] == "300k-400k"  # the table is printed too
    assert _is_png(out)


def test_recorded_toml_plot(tmp_path, capsys):
    toml = tmp_path / "c.toml"
    toml.write_text(RECORDED)
    figure = curve.toml_figure(toml, curve.load_references())
    # Each bin's mean at the bin's middle; the reference up to the last bin of the series.
    assert figure["series"][0]["x"] == [50_000, 150_000, 250_000] and figure["series"][0]["y"] == [1.0, 2.0, 4.5]
    assert figure["series"][1]["x"] == [25_000, 150_000] and figure["series"][1]["color"] == "C3"
    assert figure["reference"]["y"] == [1.31, 1.82, 3.61]
    out = tmp_path / "c.png"
    assert curve.main(["--from-toml", str(toml), "--plot", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert _is_png(out)


@pytest.mark.parametrize(
    "text, mentions",
    [
        (
            RECORDED.replace(
                'commands = ["python dqn_atari.py --seed 1 --run-name r", "python benchmarks/curve.py runs/r"]', ""
            ),
            "missing `commands`",
        ),
        (RECORDED.replace('reference = "sb3_zoo_dqn_breakout"', 'reference = "nope"'), "sb3_zoo_dqn_pong"),
        (RECORDED.replace("mean_score = [1.5, 2.5]", "mean_score = [1.5]"), "2 bins but 1 means"),
        (RECORDED.replace("y = [2.0, 3.0]", "y = [2.0]"), "2 x values but 1 y values"),
        (RECORDED.replace("y = [2.0, 3.0]", 'y = [2.0, "a"]'), "not a finite number"),
        (RECORDED.replace("y = [2.0, 3.0]", "y = [2.0, nan]"), "not a finite number"),
        (RECORDED.replace('color = "C3"', 'color = "no-such-colour"'), "not a matplotlib color"),
        (RECORDED.replace("bin_steps = 100_000", ""), "`bins` or a positive `bin_steps`"),
        ("title = [unclosed", "not valid TOML"),
    ],
)
def test_bad_toml_exits_2(tmp_path, text, mentions):
    toml = tmp_path / "c.toml"
    toml.write_text(text)
    assert_bad_input(
        "benchmarks/curve.py", "--from-toml", toml, "--plot", tmp_path / "c.png", cwd=tmp_path, mentions=mentions
    )
    assert not (tmp_path / "c.png").exists()


def test_bad_arguments_exit_2(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(RECORDED)
    run_dir = tmp_path / "runs" / "BreakoutNoFrameskip-v4__dqn_atari__1__1700000000"
    _fake_run(run_dir, [(1_000, 1.0)])
    cases = [
        (["--from-toml", tmp_path / "missing.toml", "--plot", "x.png"], "no such file"),
        (["--from-toml", toml], "--plot OUT.png"),
        (["--from-toml", toml, "--plot", "x.jpg"], "ending in .png"),
        (["--from-toml", toml, "--plot", "x.png", "--reference", "sb3_zoo_dqn_pong"], "without a run folder"),
        ([run_dir, "--plot", "x.svg"], "ending in .png"),
        ([], "--from-toml FILE"),
    ]
    for args, mentions in cases:
        assert_bad_input("benchmarks/curve.py", *args, cwd=tmp_path, mentions=mentions, keep=True)
    assert not list(tmp_path.glob("x.*"))


def test_every_recorded_curve_draws_and_has_its_picture(tmp_path):
    tomls = sorted(CURVES.glob("*.toml"))
    assert tomls, "docs/curves/ holds the recorded curves"
    for toml in tomls:
        data = tomllib.loads(toml.read_text())
        assert data["commands"], toml  # every figure keeps the command that produced its numbers
        out = tmp_path / (toml.stem + ".png")
        assert curve.main(["--from-toml", str(toml), "--plot", str(out)]) == 0
        assert _is_png(out), toml
        assert _is_png(toml.with_suffix(".png")), (
            f"{toml.with_suffix('.png')} missing: draw it with the command in {toml}"
        )


LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_readme_and_docs_link_only_to_files_that_exist():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    missing = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or an anchor on the same page
            if not (page.parent / target.split("#")[0]).exists():
                missing.append(f"{page.relative_to(ROOT)}: {target}")
    assert not missing, missing


def test_readme_keeps_the_ci_test_command():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest tests -q" in ci and "python -m pytest tests -q" in readme
    assert len(readme.splitlines()) <= 260, "the README is a front page; the details live in docs/"
