import json
import signal
import subprocess
import sys
import time

import jax
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
    _group_shift_on(out, tmp_path, capsys)
    _imputation_on(out, tmp_path, capsys)


def _imputation_on(csv_zoo, tmp_path, capsys):
    """A minimisation editor on the CSV zoo (4 feature groups, target 2): ``evaluate`` adds the
    imputation row, ``edit --imputation`` writes a network that reads 2 groups; misuse exits 2."""
    editor_dir = tmp_path / "min-editor"
    assert main(["train-editor", "--zoo", str(csv_zoo), "--requirement", "minimisation", "--steps", "4",
                 "--chunk-steps", "4", "--networks-per-step", "2", "--out", str(editor_dir), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--editor", str(editor_dir), "--zoo", str(csv_zoo), "--lambdas", "0", "--no-auto",
                 "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["method"], r["lambda"]) for r in rows] == [("editor", 0.0), ("editor+refit", 0.0), ("imputation", "auto")]
    assert rows[2]["compliance_rate"] == 1.0 and rows[2]["found_rate"] == 1.0 and rows[2]["value"] <= 2
    member = tmp_path / "min-member.npz"
    main(["export", "--zoo", str(csv_zoo), "--member", "0", "--out", str(member)])
    edit = ["edit", "--editor", str(editor_dir), "--params", str(member), "--out", str(tmp_path / "imputed.npz")]
    assert main([*edit, "--imputation", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["lambda"] == "imputation" and len(summary["kept_groups"]) == 2 and summary["compliant"] is True
    for argv, message in (([*edit, "--imputation", "--group-shift"], "choose one"),
                          ([*edit, "--imputation", "--refit"], "--refit follows"),
                          ([*edit, "--imputation", "--lambda", "0.5"], "leave out --lambda")):
        assert main(argv) == 2
        assert message in capsys.readouterr().err


def _group_shift_on(csv_zoo, tmp_path, capsys):
    """A fairness editor on the CSV zoo: ``evaluate`` adds the group-shift row, ``edit --group-shift``
    writes the shifted network (the sensitive column is one of its inputs); misuse exits 2."""
    editor_dir = tmp_path / "fair-editor"
    assert main(["train-editor", "--zoo", str(csv_zoo), "--requirement", "fairness", "--steps", "4", "--chunk-steps",
                 "4", "--networks-per-step", "2", "--requirement-rows", "64", "--out", str(editor_dir),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--editor", str(editor_dir), "--zoo", str(csv_zoo), "--lambdas", "0", "--no-auto",
                 "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["method"], r["lambda"]) for r in rows] == [("editor", 0.0), ("group_shift", "auto")]
    assert set(rows[1]) >= {"compliance_rate", "accuracy_change", "jsd", "constant_fraction", "seconds_per_edit",
                            "found_rate", "agreement"}
    member = tmp_path / "fair-member.npz"
    main(["export", "--zoo", str(csv_zoo), "--member", "0", "--out", str(member)])
    edit = ["edit", "--editor", str(editor_dir), "--params", str(member), "--out", str(tmp_path / "shifted.npz")]
    assert main([*edit, "--group-shift", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["lambda"] == "group-shift" and len(summary["shifts"]) == 2 and isinstance(summary["found"], bool)
    assert (tmp_path / "shifted.npz").is_file()
    for argv, message in (([*edit, "--group-shift", "--lambda", "0.5"], "leave out --lambda"),
                          (edit, "--lambda is required")):
        assert main(argv) == 2
        assert message in capsys.readouterr().err


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


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "zoo"
    assert main(["zoo", "--dataset", "breast_cancer", *TINY_ARGS, "--epochs", "10", "--out", str(out)]) == 0
    return out


def test_export_lid_and_check(small_zoo, tmp_path, capsys):
    member = tmp_path / "member.npz"
    assert main(["export", "--zoo", str(small_zoo), "--member", "1", "--out", str(member)]) == 0
    lid_dir = tmp_path / "lid"
    code = main(["lid", "--zoo", str(small_zoo), "--member", "1", "--tau", "0.8", "--domain", "zonotope",
                 "--rank", "2", "--steps", "40", "--cert-samples", "60", "--heldout-samples", "100",
                 "--out", str(lid_dir), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    for key in ("inside", "certified_accuracy", "certified_accuracy_lower_bound", "log_volume"):
        assert key in summary
    assert summary["inside"] is True and summary["holds"] is True
    assert summary["guarantee"] == "distribution" and summary["confidence"] == 0.95
    assert summary["bound"] == "zonotope" and summary["lids"] == 1
    assert 0.8 <= summary["certified_accuracy_lower_bound"] <= summary["heldout_certified_accuracy"] <= 1
    assert main(["check", "--lid", str(lid_dir), "--params", str(member), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["inside"] is True
    from metaedit import nets
    spec, params = nets.load_params(member)
    far = {n: {k: v + 1.0 for k, v in layer.items()} for n, layer in params.items()}
    nets.save_params(tmp_path / "far.npz", spec, far)
    assert main(["check", "--lid", str(lid_dir), "--params", str(tmp_path / "far.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["inside"] is False
    # the same network from a params file and a data set name
    assert main(["lid", "--params", str(member), "--dataset", "breast_cancer", "--tau", "0.8", "--steps", "20",
                 "--cert-samples", "60", "--heldout-samples", "100", "--out", str(tmp_path / "lid2")]) == 0
    assert "certified accuracy" in capsys.readouterr().out
    # the sample-level guarantee with linear bounds
    assert main(["lid", "--params", str(member), "--dataset", "breast_cancer", "--tau", "0.8", "--steps", "20",
                 "--guarantee", "samples", "--bound", "linear", "--out", str(tmp_path / "lid3"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["guarantee"] == "samples" and summary["bound"] == "linear" and summary["certified_accuracy"] >= 0.8
    assert summary["cert_samples"] == 85 and summary["heldout_samples"] == 86  # half of the 171 test rows each


def test_lid_bad_inputs(small_zoo, tmp_path, capsys):
    assert main(["lid", "--zoo", str(small_zoo), "--tau", "1.5", "--out", str(tmp_path / "x")]) == 2
    assert "--tau must lie in (0, 1], got 1.5" in capsys.readouterr().err
    assert main(["lid", "--zoo", str(small_zoo), "--tau", "0.8", "--confidence", "1", "--out", str(tmp_path / "x")]) == 2
    assert "confidence must lie in (0, 1), got 1.0" in capsys.readouterr().err
    assert main(["lid", "--zoo", str(small_zoo), "--tau", "0.8", "--cert-samples", "100", "--heldout-samples", "100",
                 "--out", str(tmp_path / "x")]) == 2
    assert "100 certification + 100 held-out samples exceed the 171 test rows" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["check", "--lid", str(small_zoo)]) == 2
    assert "does not hold certified LIDs" in capsys.readouterr().err
    assert main(["lid", "--zoo", str(small_zoo), "--member", "9", "--tau", "0.8", "--out", str(tmp_path / "y")]) == 2
    assert "outside the zoo's 4 members" in capsys.readouterr().err
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip file")
    assert main(["check", "--lid", str(small_zoo), "--params", str(broken)]) == 2
    assert main(["lid", "--params", str(broken), "--dataset", "digits", "--tau", "0.5", "--out", str(tmp_path / "z")]) == 2
    assert "is not a readable metaedit params file" in capsys.readouterr().err


def test_train_editor_evaluate_and_edit(small_zoo, tmp_path, capsys):
    out = tmp_path / "editor"
    assert main(["train-editor", "--zoo", str(small_zoo), "--requirement", "pruning", "--steps", "20",
                 "--chunk-steps", "10", "--networks-per-step", "2", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--editor", str(out), "--zoo", str(small_zoo), "--lambdas", "0,1", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["method"], r["lambda"]) for r in rows] == [("editor", 0.0), ("editor+refit", 0.0), ("editor", 1.0),
                                                          ("editor+refit", 1.0), ("editor", "auto")]
    assert 0 <= rows[-1]["found_rate"] <= 1
    for row in rows:
        assert set(row) >= {"lambda", "compliance_rate", "accuracy_change", "jsd", "seconds_per_edit"}
        assert 0 <= row["compliance_rate"] <= 1 and row["seconds_per_edit"] > 0
    member = tmp_path / "m.npz"
    main(["export", "--zoo", str(small_zoo), "--member", "0", "--out", str(member)])
    assert main(["edit", "--editor", str(out), "--params", str(member), "--lambda", "0.5", "--out", str(tmp_path / "e.npz")]) == 0
    from metaedit import nets
    spec, edited = nets.load_params(tmp_path / "e.npz")
    assert edited["dense_0"]["kernel"].shape == (30, 8)
    assert main(["edit", "--editor", str(out), "--params", str(member), "--lambda", "auto", "--out", str(tmp_path / "a.npz")]) == 0
    assert "lambda auto:" in capsys.readouterr().err and nets.load_params(tmp_path / "a.npz")[0] == spec
    assert main(["edit", "--editor", str(out), "--params", str(member), "--lambda", "0.5", "--refit", "--json",
                 "--out", str(tmp_path / "r.npz")]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    refit_edit = nets.load_params(tmp_path / "r.npz")[1]
    from metaedit.requirements import PRUNING
    assert summary["refit"] is True and float(PRUNING.exact(spec, refit_edit)) >= float(PRUNING.exact(spec, edited))
    assert all((np.asarray(refit_edit[n]["kernel"])[np.asarray(edited[n]["kernel"]) == 0] == 0).all() for n in edited)
    assert main(["edit", "--editor", str(out), "--params", str(member), "--lambda", "1.5", "--out", str(tmp_path / "x.npz")]) == 2
    assert "lambda must lie in [0, 1]" in capsys.readouterr().err
    _certified_edit_then_check(out, member, spec, tmp_path, capsys)
    assert main(["train-editor", "--zoo", str(small_zoo), "--requirement", "fairness", "--steps", "10",
                 "--out", str(tmp_path / "f"), "--no-progress"]) == 2
    assert "needs a data set with a sensitive attribute" in capsys.readouterr().err


def _certified_edit_then_check(editor_dir, member, spec, tmp_path, capsys):
    """``edit --certify`` writes a compliant edit and its LID, which ``check`` confirms; bad input exits 2."""
    from certify import store
    from metaedit import datasets, nets

    edit = ["edit", "--editor", str(editor_dir), "--params", str(member), "--lambda", "0.5"]
    assert main([*edit, "--certify", "--tau", "0.6", "--out", str(tmp_path / "c.npz"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) >= {"compliant", "requirement_value", "accuracy_change", "certified_accuracy_lower_bound",
                            "lid", "resolution"}
    assert summary["lid"] == str(tmp_path / "c.lid") and summary["certified_accuracy_lower_bound"] >= 0.6
    assert main(["check", "--lid", summary["lid"], "--params", str(tmp_path / "c.npz"), "--json"]) == 0
    checked = json.loads(capsys.readouterr().out)
    assert checked["inside"] is True and checked["guarantee"] == "distribution"
    assert checked["certified_accuracy_lower_bound"] >= 0.6
    _, edited = nets.load_params(tmp_path / "c.npz")
    box = store.load_lids(summary["lid"]).domains[0]
    for e, lo, hi in zip(*(jax.tree.leaves(t) for t in (edited, box.lo, box.hi))):
        assert (lo[e == 0] == 0).all() and (hi[e == 0] == 0).all()  # every network in the LID keeps the zeros
    other = tmp_path / "digits.npz"
    digits = datasets.load_digits()
    wrong = nets.parse_arch("mlp:8", digits.input_shape, digits.num_classes)
    nets.save_params(other, wrong, jax.tree.map(np.asarray, nets.init(wrong, jax.random.key(0))))
    for argv, message in [
        ([*edit, "--certify", "--tau", "1.5"], "tau must lie in (0, 1], got 1.5"),
        ([*edit, "--certify"], "--certify needs --tau"),
        ([*edit, "--tau", "0.6"], "--tau is for --certify"),
        ([*edit, "--confidence", "0.9"], "--confidence is for --certify"),
        ([*edit, "--certify", "--tau", "0.6", "--lid-out", summary["lid"]], "exists: remove it"),
        (["edit", "--editor", str(editor_dir), "--params", str(other), "--lambda", "0.5", "--certify", "--tau", "0.6"],
         "the editor was trained on"),
    ]:
        assert main([*argv, "--out", str(tmp_path / "bad.npz")]) == 2
        error = capsys.readouterr().err.strip()
        assert message in error and len(error.splitlines()) == 1, error
        assert not (tmp_path / "bad.npz").exists() and not (tmp_path / "bad.lid").exists()


def test_mixed_zoo_trains_one_editor_that_edits_an_unseen_architecture(tmp_path, capsys):
    mixed, unseen = tmp_path / "mixed", tmp_path / "unseen"
    common = ["--dataset", "breast_cancer", "--members", "6", "--epochs", "4", "--no-progress"]
    assert main(["zoo", *common, "--arch", "mlp:8", "mlp:6,4", "--out", str(mixed)]) == 0
    assert sorted(p.name for p in mixed.iterdir()) == ["mixed.json", "mlp_6_4", "mlp_8"]
    assert main(["zoo", *common, "--arch", "mlp:10", "--out", str(unseen)]) == 0
    out = tmp_path / "editor"
    assert main(["train-editor", "--zoo", str(mixed), "--requirement", "pruning", "--steps", "10",
                 "--chunk-steps", "5", "--out", str(out), "--no-progress"]) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 10 and "val_loss" in record  # validated on both architectures' held-out networks
    capsys.readouterr()
    assert main(["evaluate", "--editor", str(out), "--zoo", str(unseen), "--lambdas", "1", "--no-auto", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["lambda"] == 1.0 and 0 <= row["compliance_rate"] <= 1
