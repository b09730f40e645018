"""Smoke tests: the experiment runner end to end on a tiny compliance config, and every config's flags."""

import csv

import pytest

from experiments import compliance, run
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


@pytest.mark.parametrize("name", run.names())
def test_every_config_loads_and_its_flags_parse(name, capsys):
    with pytest.raises(SystemExit) as stop:
        run.main(["--config", name, "--help"])
    assert stop.value.code == 0
    assert "--out" in capsys.readouterr().out
