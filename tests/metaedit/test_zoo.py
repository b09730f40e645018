import functools
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from metaedit import checkpoint, nets, training, zoo
from metaedit.checkpoint import CheckpointError
from metaedit.zoo import ZooConfig, ZooError

TINY = ZooConfig(members=6, epochs=4, batch_size=32, chunk_steps=10, seed=3)


def tiny_spec(dataset):
    return nets.MLPSpec(dataset.input_shape, (8,), dataset.num_classes)


@pytest.fixture(scope="module")
def tiny_zoo(breast_cancer, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("zoo") / "run"
    return zoo.train_zoo(tiny_spec(breast_cancer), breast_cancer, TINY, workdir=workdir, progress=False), workdir


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_zoo_trains_above_chance_and_members_differ(tiny_zoo, breast_cancer):
    trained, _ = tiny_zoo
    majority = max(breast_cancer.y_test.mean(), 1 - breast_cancer.y_test.mean())
    assert trained.metrics["test_accuracy"].shape == (6,)
    assert trained.metrics["test_accuracy"].min() > majority + 0.1
    kernels = trained.params["dense_0"]["kernel"]
    assert kernels.shape == (6, 30, 8)
    assert all(not np.allclose(kernels[0], kernels[i]) for i in range(1, 6))
    assert len(set(trained.hparams.learning_rate.tolist())) == 6
    assert len(set(trained.hparams.num_steps.tolist())) > 1
    split = trained.split
    assert sorted(np.concatenate(list(split.values())).tolist()) == list(range(6))
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (4, 1, 1)


def test_vmapped_member_equals_member_trained_alone(tiny_zoo, breast_cancer):
    trained, _ = tiny_zoo
    n = len(breast_cancer.y_train)
    order = np.random.default_rng([TINY.seed, 0]).permutation(n)
    data = training.Batch(breast_cancer.x_train[order], breast_cancer.y_train[order])
    index = 4
    alone = jax.jit(functools.partial(zoo.train_one, tiny_spec(breast_cancer), TINY))(
        zoo.member_key(TINY.seed, index), trained.hparams.member(index), data)
    for a, b in zip(jax.tree.leaves(alone.params), jax.tree.leaves(trained.member(index))):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)
    assert int(alone.step) == TINY.num_chunks(n) * TINY.chunk_steps


def test_checkpoint_round_trip_is_bitwise(tiny_zoo):
    trained, workdir = tiny_zoo
    loaded = zoo.load_zoo(workdir)
    assert loaded.spec == trained.spec and loaded.config == trained.config
    assert_trees_equal(loaded.params, trained.params)
    assert_trees_equal(tuple(loaded.hparams), tuple(trained.hparams))
    for key in trained.metrics:
        np.testing.assert_array_equal(loaded.metrics[key], trained.metrics[key])
    for key in trained.split:
        np.testing.assert_array_equal(loaded.split[key], trained.split[key])
    # a finished zoo is loaded, not retrained, by the same call
    again = zoo.train_zoo(trained.spec, _dataset(trained), TINY, workdir=workdir, progress=False)
    assert_trees_equal(again.params, trained.params)


def _dataset(trained):
    from metaedit.datasets import load_source
    return load_source(trained.dataset)


def test_interrupted_then_resumed_run_equals_uninterrupted(tiny_zoo, breast_cancer, tmp_path):
    trained, _ = tiny_zoo
    spec = tiny_spec(breast_cancer)
    workdir = tmp_path / "interrupted"
    assert zoo.train_zoo(spec, breast_cancer, TINY, workdir=workdir, progress=False, stop_after_chunks=2) is None
    assert checkpoint.steps(workdir) == [1, 2]
    with pytest.raises(ZooError, match="unfinished .*2 of 5 chunks"):
        zoo.load_zoo(workdir)
    assert zoo.train_zoo(spec, breast_cancer, TINY, workdir=workdir, progress=False, stop_after_chunks=1) is None
    resumed = zoo.train_zoo(spec, breast_cancer, TINY, workdir=workdir, progress=False)
    assert_trees_equal(resumed.params, trained.params)
    for key in trained.metrics:
        np.testing.assert_array_equal(resumed.metrics[key], trained.metrics[key])


def test_mismatched_checkpoint_is_refused(tiny_zoo, breast_cancer):
    _, workdir = tiny_zoo
    other = ZooConfig(**{**TINY.__dict__, "members": 7})
    with pytest.raises(CheckpointError, match="does not match: config"):
        zoo.train_zoo(tiny_spec(breast_cancer), breast_cancer, other, workdir=workdir, progress=False)
    wider = nets.MLPSpec(breast_cancer.input_shape, (9,), 2)
    with pytest.raises(CheckpointError, match="does not match: spec"):
        zoo.train_zoo(wider, breast_cancer, TINY, workdir=workdir, progress=False)


def test_corrupt_checkpoint_is_refused_and_earlier_steps_survive(breast_cancer, tmp_path):
    spec = tiny_spec(breast_cancer)
    workdir = tmp_path / "corrupt"
    zoo.train_zoo(spec, breast_cancer, TINY, workdir=workdir, progress=False, stop_after_chunks=2)
    data_files = sorted(p for p in (workdir / "2" / "arrays").rglob("*") if p.is_file() and "/d/" in str(p))
    assert data_files
    for path in data_files:  # flip bytes inside every stored chunk of step 2
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"step 2 .*corrupt"):
        zoo.train_zoo(spec, breast_cancer, TINY, workdir=workdir, progress=False)
    assert checkpoint.steps(workdir) == [1, 2]  # nothing was deleted
    record_file = next((workdir / "1" / "record").glob("*metadata*"))
    record_file.write_text("{not json")
    with pytest.raises(CheckpointError, match="step 1 has an unreadable record"):
        checkpoint.read_record(workdir, step=1)


def test_bad_configs_are_named(breast_cancer):
    with pytest.raises(ZooError, match="members must be a positive integer"):
        ZooConfig(members=0)
    with pytest.raises(ZooError, match="learning_rate must be a range"):
        ZooConfig(learning_rate=(1e-2, 1e-3))
    with pytest.raises(ZooError, match="subsample must be a range"):
        ZooConfig(subsample=(0.5, 1.5))
    with pytest.raises(ZooError, match="network_split"):
        ZooConfig(network_split=(0.5, 0.5, 0.5))
    with pytest.raises(ZooError, match="takes inputs"):
        zoo.train_zoo(nets.MLPSpec((31,), (4,), 2), breast_cancer, TINY, progress=False)
    with pytest.raises(ZooError, match="has 3 outputs"):
        zoo.train_zoo(nets.MLPSpec((30,), (4,), 3), breast_cancer, TINY, progress=False)


def test_cnn_zoo_on_digits_learns(digits):
    spec = nets.CNNSpec(digits.input_shape, (8, 8), 10)
    config = ZooConfig(members=3, epochs=8, batch_size=64, chunk_steps=40, seed=0,
                       learning_rate=(5e-3, 1e-2))
    trained = zoo.train_zoo(spec, digits, config, progress=False)
    assert trained.params["conv_1"]["kernel"].shape == (3, 3, 3, 8, 8)
    assert trained.metrics["test_accuracy"].min() > 0.3  # chance is 0.1


SHARDED_SCRIPT = """
import os, sys
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax, numpy as np
from metaedit import datasets, nets, zoo
assert len(jax.devices()) == 8, jax.devices()
data = datasets.load_breast_cancer()
config = zoo.ZooConfig(members=6, epochs=4, batch_size=32, chunk_steps=10, seed=3)
trained = zoo.train_zoo(nets.MLPSpec(data.input_shape, (8,), 2), data, config, workdir=sys.argv[2], progress=False)
leaves = {str(i): np.asarray(l) for i, l in enumerate(jax.tree.leaves(trained.params))}
np.savez(sys.argv[1], **leaves, **{"metric_" + k: v for k, v in trained.metrics.items()})
"""


def test_eight_devices_match_one(tiny_zoo, tmp_path):
    trained, _ = tiny_zoo
    out = tmp_path / "sharded.npz"
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}  # XLA_FLAGS kept: the same codegen
    done = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(out), str(tmp_path / "sharded-run")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as sharded:
        for i, leaf in enumerate(jax.tree.leaves(trained.params)):
            np.testing.assert_allclose(sharded[str(i)], leaf, rtol=1e-5, atol=1e-6)
        for key, values in trained.metrics.items():
            np.testing.assert_allclose(sharded["metric_" + key], values, rtol=1e-5, atol=1e-6)
    # the zoo saved by 8 devices (6 members padded to 8) loads on one
    reloaded = zoo.load_zoo(tmp_path / "sharded-run")
    assert reloaded.params["dense_0"]["kernel"].shape == (6, 30, 8)
