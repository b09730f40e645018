"""The quickstart end to end in a tiny configuration, its report, its certified LID, and bad input."""

import csv
import json

import pytest

from metaedit.cli import main

TINY = ["--dataset", "german", "--arch", "mlp:8", "--members", "8", "--epochs", "4", "--steps", "20",
        "--lid-steps", "40", "--no-progress"]


def test_tiny_quickstart_writes_its_report_and_a_certified_lid(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| editor | lambda=0.0 |" in printed and "certified edit" in printed
    for name in ("report.md", "metrics.csv", "pareto.png"):
        assert (out / name).is_file()
    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == ["editor"] * 6 + ["group_shift", "threshold_optimizer", "penalty_finetune"]
    assert [r["lambda"] for r in rows][:6] == ["0.0", "0.25", "0.5", "0.75", "1.0", "auto"]
    assert all(0 <= float(r["constant_fraction"]) <= 1 for r in rows)
    # the LID of the edited network is confirmed by `metaedit check`
    assert main(["check", "--lid", str(out / "work" / "lid"), "--params", str(out / "work" / "edited.npz"),
                 "--json"]) == 0
    checked = json.loads(capsys.readouterr().out)
    assert checked["inside"] is True and checked["holds"] is True
    assert checked["certified_accuracy"] >= checked["tau"]
    assert "held-out" in (out / "report.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--requirement", "fairnes"], "argument --requirement: invalid choice: 'fairnes'"),
    (["--members", "1"], "--members must be at least 4"),
    (["--csv", "DATA", "--label", "outcome"], "unknown label column 'outcome'"),
    (["--csv", "DATA"], "--csv needs --label"),
    (["--dataset", "breast_cancer"], "fairness needs a data set with a sensitive attribute"),
    (["--tau", "1.5"], "--tau must lie in (0, 1], got 1.5"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, message, tmp_path, capsys):
    data = tmp_path / "mine.csv"
    data.write_text("x1,x2,group,label\n" + "\n".join(f"{i % 7},{i % 3},{'ab'[i % 2]},{i % 2}" for i in range(60)))
    out = tmp_path / "qs"
    argv = [str(data) if a == "DATA" else a for a in argv]
    assert main(["quickstart", *argv, "--out", str(out), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1, error
    assert not out.exists()
