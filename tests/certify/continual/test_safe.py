import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from certify import certificates, domains, lid, project
from certify import continual
from certify.continual import ContinualError, safe
from metaedit import nets

TINY_LID = lid.LIDConfig(steps=60, snapshot_every=20)


@pytest.fixture(scope="module")
def sequence(digits):
    return continual.split(digits, "domain", pairs=((0, 1), (2, 3), (4, 5)), max_train=120)


def test_projected_training_never_leaves_its_domain(sequence):
    spec = nets.MLPSpec(sequence.input_shape, (8,), 2)
    params = nets.init(spec, jax.random.key(0))
    x, y = jnp.asarray(sequence.x_train[1]), jnp.asarray(sequence.y_train[1])
    box = domains.box_around(params, 0.01)
    generators = jax.tree.map(lambda p: 0.01 * jax.random.normal(jax.random.key(1), (3,) + p.shape), params)
    zonotope = domains.zonotope_around(params, 3, radius=0.005, generators=generators)
    for domain in (box, zonotope):
        tx = project.projected(optax.adam(0.05), domain)

        @jax.jit
        def step(p, state, tx=tx):
            grads = jax.grad(lambda q: optax.softmax_cross_entropy_with_integer_labels(nets.apply(spec, q, x), y).mean())(p)
            updates, state = tx.update(grads, state, p)
            return optax.apply_updates(p, updates), state

        p, state = params, tx.init(params)
        for i in range(25):
            p, state = step(p, state)
            assert domain.contains(p, rtol=1e-6), (type(domain).__name__, i)
        assert float(project.distance(p, params)) > 0  # it did move
    moved = params
    for i in range(10):  # the scanned box trainer of safe runs, step by step
        moved = safe.projected_steps(spec, moved, box, x, y, 5, 0.05, 32, jax.random.key(i))
        assert box.contains(moved)


def test_meta_gradient_through_the_lid_solve_matches_finite_differences(sequence):
    with jax.enable_x64(True):
        spec = nets.MLPSpec(sequence.input_shape, (4,), 2)
        x = jnp.asarray(sequence.x_train[0][:24], jnp.float64)
        y = jnp.asarray(sequence.y_train[0][:24])
        params = jax.tree.map(lambda p: p.astype(jnp.float64), nets.init(spec, jax.random.key(2)))
        params = safe.projected_steps(spec, params, None, x, y, 60, 0.05, 24, jax.random.key(3))
        accuracy = float((nets.apply(spec, params, x).argmax(-1) == y).mean())
        constraints = (certificates.Constraint(x, y, max(accuracy - 0.1, 0.5)),)
        config = safe.SafeConfig(lookahead_steps=3, batch=16, lid=lid.LIDConfig(steps=40, snapshot_every=20))
        nx = jnp.asarray(sequence.x_train[1][:16], jnp.float64)
        ny = jnp.asarray(sequence.y_train[1][:16])
        phi = jax.tree.map(lambda p: 0.3 * jax.random.normal(jax.random.key(4), p.shape, jnp.float64), params)
        loss = jax.jit(lambda f: safe.lookahead_loss(f, spec, params, constraints, config, nx, ny,
                                                     jax.random.key(5)))
        grads = jax.jit(jax.grad(loss))(phi)
        norm = float(jnp.sqrt(sum((g ** 2).sum() for g in jax.tree.leaves(grads))))
        assert np.isfinite(norm) and norm > 1e-8
        direction = jax.tree.map(lambda g: g / norm, grads)  # the steepest direction: a large, clean signal
        h = 1e-4
        plus = loss(jax.tree.map(lambda f, d: f + h * d, phi, direction))
        minus = loss(jax.tree.map(lambda f, d: f - h * d, phi, direction))
        finite = float((plus - minus) / (2 * h))
        assert finite == pytest.approx(norm, rel=2e-2)


@pytest.mark.parametrize("pool", safe.POOLS)
def test_safe_run_keeps_every_old_task_certified_and_sampled_params_agree(sequence, pool):
    spec = nets.MLPSpec(sequence.input_shape, (16,), 2)
    config = safe.SafeConfig(steps_per_task=150, cert_samples=64, heldout_samples=100, lid=TINY_LID,
                             bias="update", strategy="best-loss", recentre=2, pool=pool)
    assert safe.pool_biases(config) == (("update",) if pool == "snapshots" else ("update", "none", "fisher"))
    result = safe.train_safely(spec, sequence, config)
    assert result.matrix.shape == (3, 3) and all(result.inside)
    assert len(result.lids) == 2 * 2  # tasks 1 and 2: the LID at the boundary, then one re-centred around the params
    assert len(result.picks) == len(result.lids)
    for pick, chosen in zip(result.picks, result.lids):  # each pick names a solve of the pool and its snapshot
        bias, step = pick.split("@")
        assert bias in safe.pool_biases(config) + ("kept",) and int(step) == chosen.step
    centres = [jax.tree.leaves(l.domain.center) for l in result.lids]
    assert not all(np.allclose(a, b) for a, b in zip(centres[0], centres[1]))  # re-centred where training had gone
    assert len(result.certificates) == 1 + 2  # after task 1: task 0; after task 2: tasks 0 and 1
    for c in result.certificates:
        assert c.holds and c.certified_accuracy >= c.tau
    assert result.matrix[0, 0] > 0.9 and result.matrix[-1, -1] > result.matrix[-2, -1]  # learning inside the LID
    # sampled parameters of the last LID, run through the real network, keep the certified samples right
    box = result.lids[-1].domain
    rng = np.random.default_rng(config.seed)
    x, y = jnp.asarray(sequence.x_train[0]), jnp.asarray(sequence.y_train[0])
    hits = certificates.certified(spec, box, x, y)
    assert bool(hits.any())
    samples = box.sample(jax.random.key(7), 200, corners=bool(rng.integers(2)))
    predictions = jax.vmap(lambda p: nets.apply(spec, p, x).argmax(-1))(samples)
    assert bool((predictions[:, hits] == y[hits]).all())
    assert box.contains(result.params)


def test_bias_weights_have_mean_one_and_point_where_they_should(sequence):
    spec = nets.MLPSpec(sequence.input_shape, (8,), 2)
    params = nets.init(spec, jax.random.key(0))
    x, y = jnp.asarray(sequence.x_train[0][:32]), jnp.asarray(sequence.y_train[0][:32])
    old = (certificates.Constraint(x, y, 0.5),)
    for bias in (safe.fisher_bias(spec, params, old), safe.update_bias(spec, params, x, y)):
        leaves = jax.tree.leaves(bias)
        assert sum(float(b.sum()) for b in leaves) / sum(b.size for b in leaves) == pytest.approx(1.0, rel=1e-4)
        assert all(bool((b > 0).all()) for b in leaves)
    grads = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(nets.apply(spec, p, x), y).mean())(params)
    g, b = np.abs(np.asarray(grads["dense_0"]["kernel"])).ravel(), np.asarray(safe.update_bias(spec, params, x, y)["dense_0"]["kernel"]).ravel()
    assert b[np.argmax(g)] > b[np.argmin(g)]  # more room along the larger gradient
    f = np.asarray(safe.fisher_bias(spec, params, old)["dense_0"]["kernel"]).ravel()
    assert f[np.argmax(g)] < f[np.argmin(g)]  # less room where the old task's Fisher is large
    # the learnt bias starts from the update bias exactly, however large its weights
    large = jnp.array([1e-3, 0.5, 40.0, 400.0])
    np.testing.assert_allclose(np.asarray(jax.nn.softplus(safe.inverse_softplus(large))), np.asarray(large), rtol=1e-5)
    config = safe.SafeConfig(meta_steps=0, lookahead_steps=2, lid=lid.LIDConfig(steps=10, snapshot_every=5))
    learnt, history = safe.learned_bias(spec, params, (certificates.Constraint(x, y, 0.3),), config, x, y, jax.random.key(0))
    assert len(history) == 1 and np.isfinite(history[0])
    for a, b in zip(jax.tree.leaves(learnt), jax.tree.leaves(safe.update_bias(spec, params, x, y))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4)


def test_bad_inputs_are_named(digits, sequence):
    with pytest.raises(ContinualError, match="lookahead buffer is empty"):
        safe.SafeConfig(lookahead_samples=0)
    with pytest.raises(ContinualError, match=r"tau_max must lie in \(0, 1\]"):
        safe.tau_rule(0.9, 0.1, 1.5)
    with pytest.raises(ContinualError, match=r"tau_max must lie in \(0, 1\]"):
        safe.SafeConfig(tau_max=0.0)
    with pytest.raises(ContinualError, match="unknown LID strategy 'nearest'"):
        safe.SafeConfig(strategy="nearest")
    with pytest.raises(ContinualError, match="unknown bias 'ewc'"):
        safe.SafeConfig(bias="ewc")
    with pytest.raises(ContinualError, match="unknown LID pool"):
        safe.SafeConfig(pool="all")
    with pytest.raises(ContinualError, match="projects onto boxes"):
        safe.SafeConfig(lid=lid.LIDConfig(domain="zonotope"))
    with pytest.raises(ContinualError, match="fewer than two|two distinct|one class"):
        continual.split(digits, "domain", pairs=((0, 0), (2, 3)))
    with pytest.raises(certificates.CertificateError, match=r"tau must lie in \(0, 1\]"):
        certificates.check_constraints([certificates.Constraint(jnp.zeros((2, 8, 8, 1)), jnp.zeros(2, jnp.int32), 1.5)])
    assert safe.tau_rule(0.9, 0.05, 0.95) == pytest.approx(0.85)
    assert safe.tau_rule(0.6, 0.5, 0.95) == pytest.approx(0.3)  # acc / 2 when delta is large
    assert safe.tau_rule(1.0, 0.0, 0.9) == pytest.approx(0.9)


def test_task_incremental_certificates_are_on_the_task_heads(digits):
    """Task-incremental: every task trains, is evaluated and is certified on its own classes' logits;
    sampled parameters of the LID, read through the task's head, keep its certified samples right."""
    sequence = continual.split(digits, "task", pairs=((0, 1), (2, 3)), max_train=120)
    spec = nets.MLPSpec(sequence.input_shape, (16,), sequence.num_outputs)
    config = safe.SafeConfig(steps_per_task=150, cert_samples=64, heldout_samples=100, lid=TINY_LID)
    result = safe.train_safely(spec, sequence, config)
    assert all(result.inside) and all(c.holds for c in result.certificates)
    assert result.matrix[-1, -1] > result.matrix[0, -1] + 0.1  # task 1 is learnt inside the LID
    box, head = result.lids[0].domain, jnp.asarray(sequence.output_mask[0])
    x, y = jnp.asarray(sequence.x_train[0]), jnp.asarray(sequence.y_train[0])
    on_head = certificates.certified(spec, box, x, y, competitors=head)
    assert int(on_head.sum()) > int(certificates.certified(spec, box, x, y).sum())  # the other heads do not count
    samples = box.sample(jax.random.key(7), 200, corners=True)
    logits = jax.vmap(lambda p: jnp.where(head, nets.apply(spec, p, x), -jnp.inf))(samples)
    assert bool((logits.argmax(-1)[:, on_head] == y[on_head]).all())
