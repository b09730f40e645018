import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from metaedit import checkpoint, zoo
from metaedit.cli import main

TINY_ARGS = ["--arch", "mlp:8", "--members", "4", "--epochs", "3", "--batch-size", "32",
             "--chunk-steps", "10", "--no-progress"]


def test_zoo_then_info_json(tmp_path, capsys):
    out = tmp_path / "bc-zoo"
    assert main(["zoo", "--dataset", "breast_cancer", *TINY_ARGS, "--seed", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "4 (networks:" in printed
    assert main(["info", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["members"] == 4 and summary["params_per_member"] == 30 * 8 + 8 + 8 * 2 + 2
    assert summary["architecture"] == "mlp:8" and summary["complete"] is True
    trained = zoo.load_zoo(out)
    assert summary["test_accuracy_mean"] == pytest.approx(float(trained.metrics["test_accuracy"].mean()))
    assert summary["test_accuracy_min"] == pytest.approx(float(trained.metrics["test_accuracy"].min()))
    assert summary["test_accuracy_min"] > 0.7


def test_zoo_on_a_users_csv(tmp_path, capsys):
    rng = np.random.default_rng(0)
    lines = ["x1,x2,colour,group,label"]
    for i in range(200):
        x1, x2 = rng.normal(size=2)
        lines.append(f"{x1:.4f},{x2:.4f},{'rgb'[i % 3]},{'ab'[i % 2]},{int(x1 + 0.5 * x2 > 0)}")
    path = tmp_path / "mine.csv"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "csv-zoo"
    code = main(["zoo", "--csv", str(path), "--label", "label", "--sensitive", "group",
                 "--categorical", "colour,group", *TINY_ARGS, "--epochs", "20", "--out", str(out)])
    assert code == 0
    capsys.readouterr()
    main(["info", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["dataset"]["name"] == "csv" and summary["dataset"]["categorical"] == ["colour", "group"]
    assert summary["test_accuracy_mean"] > 0.8


@pytest.mark.parametrize("argv, message", [
    (["zoo", "--dataset", "adult", "--arch", "cnn:4", "--out", "x"], "needs image-like inputs"),
    (["zoo", "--dataset", "digits", "--arch", "mlpp:4", "--out", "x"], "unknown architecture kind"),
    (["zoo", "--csv", "nowhere.csv", "--label", "y", "--arch", "mlp:4", "--out", "x"], "not found"),
    (["zoo", "--dataset", "digits", "--arch", "mlp:4", "--members", "0", "--out", "x"], "members must be"),
    (["info", "no-such-dir"], "no checkpoint found in no-such-dir"),
])
def test_bad_input_exits_with_a_clear_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_killed_cli_run_resumes_to_the_same_zoo(tmp_path):
    """SIGKILL a real `metaedit zoo` process after its first checkpoint, run it again, compare."""
    common = ["--dataset", "breast_cancer", "--arch", "mlp:8", "--members", "4", "--epochs", "12",
              "--batch-size", "16", "--chunk-steps", "25", "--seed", "5", "--no-progress"]
    command = [sys.executable, "-m", "metaedit.cli", "zoo", *common]
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    process = subprocess.Popen(command + ["--out", str(killed_dir)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None and not checkpoint.steps(killed_dir):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = checkpoint.steps(killed_dir)
    assert saved, "the run ended before writing its first checkpoint"
    assert not checkpoint.read_record(killed_dir)[1].get("complete")
    for out in (killed_dir, clean_dir):
        done = subprocess.run(command + ["--out", str(out)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    resumed, clean = zoo.load_zoo(killed_dir), zoo.load_zoo(clean_dir)
    for name in clean.params:
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(resumed.params[name][leaf], clean.params[name][leaf])
