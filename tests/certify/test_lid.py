"""The LID solver, projection and the safe optimiser."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from certify import certificates, domains, lid, project
from certify.lid import LIDConfig, LIDError
from metaedit import nets
from tests.fitting import fit

SPEC = nets.MLPSpec((4,), (6,), 2)
FAST = LIDConfig(steps=60, snapshot_every=20, learning_rate=0.2, init_log_radius=-3.0)


@pytest.fixture(scope="module")
def problem_data():
    """A small network trained (a few hundred Adam steps) on a linearly separable task."""
    key = jax.random.key(0)
    x = jax.random.normal(key, (400, 4))
    y = (x @ jnp.array([1.0, -1.0, 0.5, 0.0]) > 0).astype(jnp.int32)
    params = fit(SPEC, x, y, jax.random.key(1))
    accuracy = float((nets.apply(SPEC, params, x).argmax(1) == y).mean())
    assert accuracy > 0.95
    constraint = certificates.Constraint(x[:200], y[:200], 0.9)
    return params, constraint, [(x[200:], y[200:])]


def sample_check(domain, constraint, count=2000):
    """No sampled parameter vector misclassifies a certified sample."""
    certified = np.asarray(certificates.certified(SPEC, domain, constraint.x, constraint.y))
    points = domain.sample(jax.random.key(5), count)
    corners = domain.sample(jax.random.key(6), count, corners=True)
    for stacked in (points, corners):
        predictions = jax.vmap(lambda p: nets.apply(SPEC, p, constraint.x).argmax(1))(stacked)
        assert bool((predictions[:, certified] == constraint.y[certified]).all())
    return certified.mean()


@pytest.mark.parametrize("kind", ["box", "zonotope"])
def test_lids_are_certified_sound_and_contain_the_network(problem_data, kind):
    params, constraint, heldout = problem_data
    config = FAST if kind == "box" else dataclasses.replace(FAST, domain="zonotope", rank=2)
    start = None
    if kind == "zonotope":
        boxes, _ = lid.compute(SPEC, params, [constraint], heldout, FAST)
        start = lid.best(boxes).domain
    lids, state = lid.compute(SPEC, params, [constraint], heldout, config, start=start)
    assert len(lids) == 1 + config.num_snapshots + 1  # the start, every snapshot, the final domain
    for found in lids:
        (certificate,) = found.certificates
        assert certificate.holds and certificate.certified_accuracy >= 0.9
        assert 0 <= certificate.lower_bound <= certificate.heldout_certified_accuracy
        assert sample_check(found.domain, constraint) >= 0.9
        assert found.domain.contains(params)
    best = lid.best(lids)
    if kind == "box":
        assert best.log_volume > lids[0].log_volume + 10  # the solver grew the tiny starting box
    else:
        assert best.log_volume >= lid.best(boxes).log_volume  # never smaller than the box it starts from


def test_solver_is_deterministic_vmappable_and_differentiable(problem_data):
    params, constraint, _ = problem_data
    problem = lid.make_problem(SPEC, params, FAST)
    solve = jax.jit(lid.solve)
    first, second = solve(problem, (constraint,)), solve(problem, (constraint,))
    for a, b in zip(jax.tree.leaves(first.theta), jax.tree.leaves(second.theta)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a population of three networks in one vmapped solve equals three solves
    population = jax.tree.map(lambda p: jnp.stack([p, 1.01 * p, 0.99 * p]), params)
    problems = jax.vmap(lambda p: lid.make_problem(SPEC, p, FAST))(population)
    together = jax.jit(jax.vmap(lid.solve, in_axes=(0, None)))(problems, (constraint,))
    alone = solve(lid.make_problem(SPEC, jax.tree.map(lambda p: p[2], population), FAST), (constraint,))
    for a, b in zip(jax.tree.leaves(together.theta), jax.tree.leaves(alone.theta)):
        np.testing.assert_allclose(np.asarray(a)[2], np.asarray(b), rtol=2e-3, atol=1e-3)

    # gradients through the whole unrolled solve, with respect to bias weights and data; the
    # constraint must be active, else the (scale-free) Adam steps do not depend on either
    def final_size(bias, x):
        problem = lid.make_problem(SPEC, params, FAST, bias=bias)
        state = lid.solve(problem, (constraint._replace(x=x, tau=0.97),))
        return lid.size(problem, lid.domain_of(problem, state.theta))

    ones = jax.tree.map(jnp.ones_like, params)
    grad_bias, grad_x = jax.jit(jax.grad(final_size, argnums=(0, 1)))(ones, constraint.x)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grad_bias)) and bool(jnp.isfinite(grad_x).all())
    assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(grad_bias))) > 0
    assert float(jnp.abs(grad_x).sum()) > 0
    active = jax.jit(lid.solve)(lid.make_problem(SPEC, params, FAST), (constraint._replace(tau=0.97),))
    assert float(active.multipliers[0]) > 0 or float(active.penalty) > FAST.penalty


def test_bias_weights_and_masks_shape_the_domain(problem_data):
    params, constraint, heldout = problem_data
    frozen = jax.tree.map(jnp.ones_like, params)
    frozen["dense_0"] = {"kernel": jnp.zeros_like(params["dense_0"]["kernel"]), "bias": jnp.zeros_like(params["dense_0"]["bias"])}
    lids, _ = lid.compute(SPEC, params, [constraint], heldout, FAST, mask=frozen)
    domain = lid.best(lids).domain
    np.testing.assert_array_equal(domain.lo["dense_0"]["kernel"], params["dense_0"]["kernel"])
    assert bool((domain.hi["dense_1"]["kernel"] > params["dense_1"]["kernel"]).all())
    favour = jax.tree.map(jnp.ones_like, params)
    favour["dense_1"] = jax.tree.map(lambda v: 20.0 * v, favour["dense_1"])
    favoured, _ = lid.compute(SPEC, params, [constraint], heldout, FAST, bias=favour)
    plain, _ = lid.compute(SPEC, params, [constraint], heldout, FAST)
    width = lambda d, name: float(jnp.log(d.hi[name]["kernel"] - d.lo[name]["kernel"]).mean())  # noqa: E731
    assert width(lid.best(favoured).domain, "dense_1") > width(lid.best(plain).domain, "dense_1")


def test_several_constraints_are_all_certified(problem_data):
    params, constraint, heldout = problem_data
    second = certificates.Constraint(heldout[0][0][:100], heldout[0][1][:100], 0.85)
    lids, _ = lid.compute(SPEC, params, [constraint, second], [heldout[0], heldout[0]], FAST)
    for found in lids:
        assert [c.holds for c in found.certificates] == [True, True]


def test_bad_lid_inputs(problem_data):
    params, constraint, heldout = problem_data
    with pytest.raises(certificates.CertificateError, match=r"tau must lie in \(0, 1\], got 1.5"):
        lid.compute(SPEC, params, [constraint._replace(tau=1.5)], heldout, FAST)
    with pytest.raises(certificates.CertificateError, match=r"tau must lie in \(0, 1\], got 0"):
        lid.compute(SPEC, params, [constraint._replace(tau=0.0)], heldout, FAST)
    with pytest.raises(LIDError, match="the network itself certifies only"):
        lid.compute(SPEC, params, [constraint._replace(tau=1.0, y=1 - constraint.y)], heldout, FAST)
    with pytest.raises(LIDError, match="domain must be 'box' or 'zonotope'"):
        LIDConfig(domain="ball")
    with pytest.raises(certificates.CertificateError, match="has no samples"):
        lid.compute(SPEC, params, [certificates.Constraint(constraint.x[:0], constraint.y[:0], 0.5)], heldout, FAST)
    with pytest.raises(nets.SpecError, match="dense_0/kernel has shape"):
        lid.compute(nets.MLPSpec((4,), (7,), 2), params, [constraint], heldout, FAST)


@pytest.mark.parametrize("kind", ["box", "zonotope"])
def test_projection(kind):
    params = nets.init(SPEC, jax.random.key(3))
    if kind == "box":
        domain = domains.box_around(params, 0.05)
    else:
        generators = jax.tree.map(lambda p: 0.05 * jax.random.normal(jax.random.key(4), (3,) + p.shape), params)
        domain = domains.Zonotope(params, jax.tree.map(lambda p: jnp.full_like(p, 0.01), params), generators)
    inside = jax.tree.map(lambda s: s[0], domain.sample(jax.random.key(7), 1))
    same = domain.project(inside)
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(inside)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    outside = jax.tree.map(lambda p: p + 0.3, params)
    projected = domain.project(outside)
    assert domain.contains(projected, rtol=1e-5) and not domain.contains(outside)
    # no sampled point of the domain is closer to the outside point than its projection
    samples = domain.sample(jax.random.key(8), 4000)
    sample_distances = jax.vmap(lambda s: project.distance(s, outside))(samples)
    assert float(project.distance(projected, outside)) <= float(sample_distances.min()) + 1e-4


def test_union_projection_picks_the_nearest():
    params = nets.init(SPEC, jax.random.key(3))
    near = domains.box_around(params, 0.01)
    far = domains.box_around(jax.tree.map(lambda p: p + 1.0, params), 0.01)
    point, index = project.nearest([far, near], jax.tree.map(lambda p: p + 0.05, params))
    assert index == 1 and near.contains(point)


@pytest.mark.parametrize("kind", ["box", "zonotope"])
def test_projected_optimiser_never_leaves_its_domain(problem_data, kind):
    params, constraint, _ = problem_data
    if kind == "box":
        domain = domains.box_around(params, 0.02)
    else:
        generators = jax.tree.map(lambda p: 0.02 * jax.random.normal(jax.random.key(4), (2,) + p.shape), params)
        domain = domains.Zonotope(params, jax.tree.map(lambda p: jnp.full_like(p, 0.005), params), generators)
    tx = project.projected(optax.adam(0.05), domain)
    state = tx.init(params)
    flipped = 1 - constraint.y  # a task that pulls hard away from the domain

    @jax.jit
    def step(p, state):
        loss = lambda q: optax.softmax_cross_entropy_with_integer_labels(nets.apply(SPEC, q, constraint.x), flipped).mean()  # noqa: E731
        updates, state = tx.update(jax.grad(loss)(p), state, p)
        return optax.apply_updates(p, updates), state

    moved = False
    p = params
    for _ in range(40):
        p, state = step(p, state)
        assert domain.contains(p, rtol=1e-6)
        moved = moved or project.distance(p, params) > 1e-3
    assert moved
