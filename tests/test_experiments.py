"""Smoke test: the compliance-experiment harness end to end on a tiny zoo."""

import csv

from experiments import compliance
from metaedit import zoo


def test_compliance_harness_writes_its_report(tmp_path):
    setup = ("breast_cancer", "mlp:8", zoo.ZooConfig(members=6, epochs=4, batch_size=32, chunk_steps=10, seed=0))
    rows = compliance.run("tiny pruning", tmp_path / "zoo", setup, "pruning", 0.9,
                          {"magnitude": [0.5, 0.9], "magnitude+finetune": [0.9]}, steps=10, out=tmp_path / "out",
                          lambdas=(0.0, 1.0))
    methods = [r["method"] for r in rows]
    assert methods.count("editor") == 2 and methods.count("magnitude") == 2 and methods.count("magnitude+finetune") == 1
    magnitude = [r for r in rows if r["method"] == "magnitude"]
    assert abs(magnitude[1]["value"] - 0.9) < 0.02 and magnitude[1]["compliance_rate"] > 0
    for name in ("report.md", "metrics.csv", "pareto.png"):
        assert (tmp_path / "out" / name).is_file()
    with open(tmp_path / "out" / "metrics.csv") as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
