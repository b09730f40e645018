"""Compiled programs kept on disk (metaedit.executables) and encoded data sets kept on disk (datasets.cache)."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaedit import datasets, executables
from metaedit.datasets import cache

PROGRAM = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp
    from metaedit import executables

    traced = []

    def norm(x, power):
        traced.append(1)
        return jnp.abs(x).sum() ** power + jnp.tanh(x).max()

    cached = executables.jit(norm, static_argnames="power")
    executables.enable(sys.argv[1])
    value = float(cached(jnp.linspace(-1.0, 2.0, 7), power=2))
    print(len(traced), value)
""")


def test_a_second_process_runs_the_stored_program_without_tracing(tmp_path):
    """The first process compiles and writes the program; the second loads it, never traces the
    function, and gets the same value (in a new process, where an executable re-serialised from
    JAX's own cache would miss its kernels)."""
    runs = [subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path)], capture_output=True, text=True, timeout=120)
            for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    (first_traces, first), (second_traces, second) = [run.stdout.split() for run in runs]
    assert first_traces == "1" and second_traces == "0"
    assert first == second
    expected = float(jnp.abs(jnp.linspace(-1.0, 2.0, 7)).sum() ** 2 + jnp.tanh(jnp.linspace(-1.0, 2.0, 7)).max())
    assert float(second) == pytest.approx(expected, rel=1e-6)


@pytest.fixture
def cached_dir(tmp_path):
    executables.enable(tmp_path)
    yield tmp_path
    executables.disable()


def test_stored_programs_are_keyed_by_shape_and_static_arguments_and_survive_damage(cached_dir):
    traced = []

    def make():  # a new function object of the same name each time: what a new process sees
        def scale(x, factor):
            traced.append(1)
            return x * factor

        executables._LOADED.clear()
        return executables.jit(scale, static_argnames="factor")

    np.testing.assert_allclose(make()(jnp.ones(3), factor=2.0), 2.0)
    np.testing.assert_allclose(make()(jnp.ones(3), factor=2.0), 2.0)  # loaded from the disk, not traced
    assert len(traced) == 1
    cached = make()
    np.testing.assert_allclose(cached(jnp.ones(4), factor=2.0), 2.0)  # a new shape: a new program
    np.testing.assert_allclose(cached(jnp.ones(3), factor=3.0), 3.0)  # a new static argument: another
    assert len(list(cached_dir.glob("*.bin"))) == 3 and len(traced) == 3
    for path in cached_dir.glob("*.bin"):
        path.write_bytes(b"damaged")
    np.testing.assert_allclose(make()(jnp.ones(3), factor=3.0), 3.0)  # a damaged file: compiled again
    assert len(traced) == 4
    np.testing.assert_allclose(make()(jnp.ones(3), factor=3.0), 3.0)  # and written again
    assert len(traced) == 4
    cached = make()
    np.testing.assert_allclose(jax.vmap(lambda v: cached(v, factor=2.0))(jnp.ones((2, 3))), 2.0)  # under a trace
    assert len(traced) == 5


def test_the_data_cache_returns_the_same_data_set(tmp_path):
    direct = datasets.load_dataset("german", sensitive="age", seed=3)
    cache.enable(tmp_path)
    try:
        first = datasets.load_dataset("german", sensitive="age", seed=3)
        files = list(tmp_path.glob("german-*.npz"))
        assert len(files) == 1
        again = datasets.load_dataset("german", sensitive="age", seed=3)
        files[0].write_bytes(b"damaged")
        repaired = datasets.load_dataset("german", sensitive="age", seed=3)
    finally:
        cache.disable()
    for loaded in (first, again, repaired):
        for field in ("x_train", "y_train", "x_test", "y_test", "s_train", "s_test"):
            np.testing.assert_array_equal(getattr(loaded, field), getattr(direct, field))
            assert getattr(loaded, field).dtype == getattr(direct, field).dtype
        for field in ("name", "num_classes", "sensitive_name", "sensitive_groups", "feature_names", "group_names",
                      "feature_groups", "source"):
            assert getattr(loaded, field) == getattr(direct, field), field
