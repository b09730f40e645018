"""The continual-learning baselines (certify.continual.baselines)."""


import jax
import numpy as np
import pytest

from certify import continual
from certify.continual import baselines as baselines_cl
from certify.continual import ContinualError
from metaedit import nets

PAIRS = ((0, 1), (2, 3), (4, 5))
SEEDS = (0, 1)
# One training setting for every baseline test, so that each method compiles once (lr and strength
# are traced, so changing them does not recompile).
TRAIN = dict(steps_per_task=60, batch=32, lr=3e-3, memory_per_task=10, fisher_samples=64)


# --------------------------------------------------------------------------- baselines


@pytest.fixture(scope="module")
def results(spec, class_il):
    """Every method on the class-incremental sequence, run twice (determinism)."""
    def twice(method):
        return tuple(baselines_cl.run(method, spec, class_il, SEEDS, **TRAIN) for _ in range(2))

    return {method: twice(method) for method in baselines_cl.METHODS}


@pytest.mark.parametrize("method", sorted(baselines_cl.METHODS))
def test_every_baseline_runs_learns_and_is_deterministic(results, method):
    first, second = results[method]
    assert first.matrix.shape == (len(SEEDS), 3, 3) and first.seeds == SEEDS
    assert np.all((first.matrix >= 0) & (first.matrix <= 1))
    # The first task is learnt (every method is plain training there). Later tasks need not be: a
    # strong penalty or A-GEM's projection may keep the network from learning them.
    assert np.all(first.matrix[:, 0, 0] > 0.9)
    np.testing.assert_array_equal(first.matrix, second.matrix)
    for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params)):
        assert a.shape[0] == len(SEEDS)
        np.testing.assert_array_equal(a, b)
    kernel = first.params["dense_0"]["kernel"]
    assert not np.allclose(kernel[0], kernel[1])  # the seeds are different networks
    assert second.compile_seconds == 0.0 and first.seconds > 0


def test_vmapped_seeds_equal_each_seed_alone(spec, class_il, results):
    together = results["naive"][0]
    for i, seed in enumerate(SEEDS):
        alone = baselines_cl.run("naive", spec, class_il, (seed,), **TRAIN)
        np.testing.assert_allclose(alone.matrix[0], together.matrix[i], atol=0.02)
        for a, b in zip(jax.tree.leaves(alone.params), jax.tree.leaves(together.params)):
            np.testing.assert_allclose(a[0], b[i], rtol=1e-4, atol=1e-4)


def test_init_params_default_to_the_first_half_of_each_seed_key(spec, class_il, results):
    keys = jax.numpy.stack([jax.random.split(jax.random.key(s))[0] for s in SEEDS])
    init = jax.vmap(lambda k: nets.init(spec, k))(keys)
    given = baselines_cl.run("naive", spec, class_il, SEEDS, init_params=init, **TRAIN)
    np.testing.assert_array_equal(given.matrix, results["naive"][0].matrix)
    with pytest.raises(ContinualError, match="init_params holds 2 networks for 1 seeds"):
        baselines_cl.run("naive", spec, class_il, (0,), init_params=init, **TRAIN)


# Class-incremental EWC needs a very large strength: the Fisher of the head units of classes not yet
# seen is almost zero, so only a huge multiplier keeps them from taking over (1e6 is not enough here).
# LwF's distillation on the new task's inputs keeps the old classes' logits where the teacher had them.
@pytest.mark.parametrize("method, strength", [("l2", 10.0), ("ewc", 1e8), ("si", 100.0), ("lwf", 10.0)])
def test_a_strong_penalty_forgets_less_than_naive(spec, class_il, results, method, strength):
    naive = results["naive"][0].matrix
    strong = baselines_cl.run(method, spec, class_il, SEEDS, strength=strength, **TRAIN).matrix
    np.testing.assert_array_equal(strong[:, 0, 0], naive[:, 0, 0])  # no penalty on the first task
    assert strong[:, -1, 0].mean() > naive[:, -1, 0].mean() + 0.5
    assert continual.forgetting(strong).mean() < continual.forgetting(naive).mean()


def test_memory_methods_remember_task_zero_better_than_naive(results):
    naive = results["naive"][0].matrix[:, -1, 0].mean()
    for method in ("replay", "agem"):
        assert results[method][0].matrix[:, -1, 0].mean() > naive + 0.3


def test_task_incremental_masking_forgets_less_than_class_incremental(digits, spec, results):
    task_il = baselines_cl.run("naive", spec, continual.split(digits, "task", PAIRS), SEEDS, **TRAIN)
    assert task_il.compile_seconds == 0.0  # same shapes as the class-incremental run
    assert task_il.matrix[:, -1, 0].mean() > results["naive"][0].matrix[:, -1, 0].mean() + 0.3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="gem"), "unknown method 'gem'"),
        (dict(steps_per_task=0), "steps_per_task must be a positive integer"),
        (dict(batch=-4), "batch must be a positive integer"),
        (dict(method="ewc", strength=-1.0), "strength must be a finite number >= 0"),
        (dict(method="replay", memory_per_task=0), "memory_per_task \\(for replay\\) must be a positive"),
        (dict(method="agem", memory_per_task=-5), "memory_per_task \\(for agem\\) must be a positive"),
        (dict(method="replay", memory_per_task=10_000), "exceeds the smallest task"),
        (dict(lr=0.0), "lr must be a positive number"),
        (dict(seeds=()), "seeds is empty"),
    ],
)
def test_run_rejects_bad_settings(spec, class_il, kwargs, message):
    options = {"method": "naive", "seeds": SEEDS, **kwargs}
    method, seeds = options.pop("method"), options.pop("seeds")
    with pytest.raises(ContinualError, match=message):
        baselines_cl.run(method, spec, class_il, seeds, **options)


def test_run_rejects_a_network_that_does_not_fit(digits, spec):
    with pytest.raises(ContinualError, match="needs 2"):
        baselines_cl.run("naive", spec, continual.split(digits, "domain", PAIRS), SEEDS)
