"""Smoke tests: the experiment runner end to end on a tiny compliance config, and every config's flags."""

import csv
import dataclasses
import shutil

import pytest

from experiments import compliance, run
from metaedit import report
from metaedit.editor import EditorTrainConfig
from metaedit.zoo import ZooConfig


def test_compliance_harness_writes_its_report(tmp_path):
    config = compliance.Config(
        title="tiny pruning", dataset="breast_cancer", arch="mlp:8", target=0.9, steps=10, lambdas=(0.0, 1.0),
        zoo=ZooConfig(members=6, epochs=4, batch_size=32, chunk_steps=10, seed=0),
        editor=EditorTrainConfig(requirement="pruning"),
        strengths=(("magnitude", (0.5, 0.9)), ("magnitude+finetune", (0.9,))), out=str(tmp_path / "out"))
    written, tables = run.execute(config)
    rows = tables["metrics.csv"]
    methods = [r["method"] for r in rows]
    editor = [r["lambda"] for r in rows if r["method"] == "editor"]
    assert editor.count("auto") == 1 and len(editor) == 3  # the grid, then each network's calibrated lambda
    assert methods.count("magnitude") == 2 and methods.count("magnitude+finetune") == 1
    magnitude = [r for r in rows if r["method"] == "magnitude"]
    assert abs(magnitude[1]["value"] - 0.9) < 0.02 and magnitude[1]["compliance_rate"] > 0
    for name in ("report.md", "metrics.csv", "pareto.png"):
        assert (tmp_path / "out" / name).is_file()
    with open(tmp_path / "out" / "metrics.csv") as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    before = written.read_text()
    (tmp_path / "out" / "report.md").unlink()
    again, _ = run.execute(config, report_only=True)  # the report rebuilt from the written tables
    assert again.read_text() == before
    joined = dataclasses.replace(config, out=str(tmp_path / "joined"))  # two runs' tables merged into one report
    shutil.copytree(tmp_path / "out", tmp_path / "other")
    merged, tables = run.execute(joined, merge=[str(tmp_path / "out"), str(tmp_path / "other")])
    assert tables["metrics.csv"] == 2 * report.read_csv(tmp_path / "out" / "metrics.csv") and merged.is_file()
    with pytest.raises(SystemExit, match="has no metrics.csv"):
        run.execute(joined, merge=[str(tmp_path / "out"), str(tmp_path)])
    with pytest.raises(SystemExit, match="a folder is given twice"):
        run.execute(joined, merge=[str(tmp_path / "out"), str(tmp_path / "out" / ".." / "out")])


@pytest.mark.parametrize("name", run.names())
def test_every_config_loads_and_its_flags_parse(name, capsys):
    with pytest.raises(SystemExit) as stop:
        run.main(["--config", name, "--help"])
    assert stop.value.code == 0
    assert "--out" in capsys.readouterr().out


def test_certified_edit_summary_counts_rates_over_networks(tmp_path):
    from experiments import certified_edit

    def row(method, network, compliant, bound, certified=True, conflict=None, point=None):
        return {"requirement": "pruning", "network": network, "tau": 0.8, "method": method, "compliant": compliant,
                "accuracy_change": -0.01 * network, "certified": certified, "conflict": conflict,
                "edit_complies": None if conflict is None else network == 0,
                "certified_accuracy_lower_bound": bound, "point_lower_bound": point, "kept_move": 0.5,
                "seconds": 1.0 + network, "requirement_value": 0.9}

    rows = [row("plain edit", 0, True, None, point=0.81), row("plain edit", 1, True, None, point=0.79),
            row("certified edit", 0, True, 0.805, conflict=True), row("certified edit", 1, True, 0.0, False, True),
            row("fine-tuning inside the LID", 0, False, 0.802), row("fine-tuning inside the LID", 1, False, 0.801)]
    summary = {r["method"]: r for r in certified_edit.summarise(rows)}
    assert summary["plain edit"]["certified_rate"] == 0.5 and summary["plain edit"]["both_rate"] == 0.5
    assert summary["certified edit"]["certified_rate"] == 0.5 and summary["certified edit"]["conflict_rate"] == 1.0
    assert summary["certified edit"]["edit_complies_rate"] == 0.5  # the conflict rate counts complying edits only
    assert summary["certified edit"]["bound_minus_tau"] == pytest.approx(0.005)  # over the certified network only
    assert summary["fine-tuning inside the LID"]["both_rate"] == 0.0
    assert summary["fine-tuning inside the LID"]["compliance_rate"] == 0.0
    config = certified_edit.Config(out=str(tmp_path))
    tables = {"metrics.csv": rows}
    certified_edit.report_of(config, tables).write(tmp_path, tables)
    assert (tmp_path / "summary.csv").is_file() and (tmp_path / "certified.png").is_file()
    assert "| pruning | certified edit | 2 | 100% | 50% | 50% |" in (tmp_path / "report.md").read_text()
