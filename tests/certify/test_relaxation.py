"""The linear relaxation (CROWN-style, parameters perturbed) is sound under sampling and attack."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certify import audit, bounds, certificates, domains, relaxation
from metaedit import nets

SPECS = [
    nets.MLPSpec((6,), (8, 5), 3),
    nets.MLPSpec((5,), (6, 6, 6), 3),  # three hidden layers: the backward-tightened pre-activations
    nets.CNNSpec((6, 6, 1), (3, 4), 3),  # the 1-D convolution takes the same code path
    nets.CNNSpec((10, 2), (4, 2), 3, padding=("valid", "same"), head="flatten"),  # the paper's CNN's layout
]


def random_box(params, scale, seed):
    rng = np.random.default_rng(seed)
    return domains.Box(jax.tree.map(lambda p: p - scale * jnp.asarray(rng.uniform(size=p.shape), p.dtype), params),
                       jax.tree.map(lambda p: p + scale * jnp.asarray(rng.uniform(size=p.shape), p.dtype), params))


def check_linear_sound(spec, box, x, y, key, count=400, steps=20):
    """Sampled (and, with ``steps``, attacked) margins never fall below the linear bound; no certified
    sample is misclassified."""
    atol = 1e-5 if x.dtype == jnp.float32 else 1e-10
    bound = bounds.output_bounds(spec, box, x, y, "linear").margin_lo
    certified = bound > certificates.default_margin_tol(x.dtype)
    wrong = audit.sampled_violations(spec, box, x, y, count, jax.random.fold_in(key, 1))
    assert not bool((wrong & certified).any()), "a certified sample was misclassified by a sampled network"
    if steps:
        attacked = audit.attacked_margins(spec, box, x, y, key, steps=steps)
        assert bool((attacked >= bound - atol).all()), float((attacked - bound).min())
        assert not bool(((attacked <= 0) & certified).any()), "a certified sample was misclassified under attack"
    return float(certified.mean())


@pytest.mark.parametrize("spec", SPECS, ids=nets.describe)
def test_linear_bound_is_sound_and_never_looser(spec, dtype=jnp.float64):
    """In float64, the tightest tolerance (float32 is covered by the property test below and by the
    audited LIDs of ``test_guarantee``)."""
    with jax.enable_x64(dtype == jnp.float64):
        params = jax.tree.map(lambda p: p.astype(dtype), nets.init(spec, jax.random.key(0)))
        x = jax.random.normal(jax.random.key(1), (24,) + spec.input_shape, dtype)
        y = nets.apply(spec, params, x).argmax(1)
        y = y.at[:3].set((y[:3] + 1) % spec.num_classes)
        for scale in (0.003, 0.03):
            box = random_box(params, scale, 2)
            check_linear_sound(spec, box, x, y, jax.random.key(3), steps=20 if scale == 0.03 else 0)
            linear = bounds.output_bounds(spec, box, x, y, "linear").margin_lo
            interval = bounds.output_bounds(spec, box, x, y).margin_lo
            assert bool((linear >= interval).all()) and linear.dtype == dtype


def test_linear_bound_is_tighter_than_interval_on_a_wide_mlp():
    spec = nets.MLPSpec((20,), (32, 32), 2)
    params = nets.init(spec, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (64, 20))
    y = nets.apply(spec, params, x).argmax(1)
    box = domains.box_around(params, 0.003)
    linear = bounds.output_bounds(spec, box, x, y, "linear").margin_lo
    interval = bounds.output_bounds(spec, box, x, y).margin_lo
    assert float((linear > 0).mean()) > float((interval > 0).mean())
    assert float((linear - interval).mean()) > 0


def test_any_slopes_in_the_unit_interval_are_sound():
    spec = SPECS[0]
    params = nets.init(spec, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (16, 6))
    y = nets.apply(spec, params, x).argmax(1)
    box = random_box(params, 0.05, 4)
    margins = audit.attacked_margins(spec, box, x, y, jax.random.key(5), steps=20)
    for seed in range(3):
        slopes = [jax.random.uniform(jax.random.key(seed + 10 * i), (16, 2, w)) for i, w in enumerate(spec.hidden)]
        bound = relaxation.margin_lower(spec, box.center, box.radius, x, y, slopes)
        assert bool((margins >= bound - 1e-5).all())


def test_linear_bound_is_differentiable_in_the_box():
    spec = SPECS[2]
    params = nets.init(spec, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (8,) + spec.input_shape)
    y = nets.apply(spec, params, x).argmax(1)
    margins = lambda b: bounds.output_bounds(spec, b, x, y, "linear").margin_lo.sum()  # noqa: E731
    grad = jax.grad(margins)(random_box(params, 0.01, 0))
    leaves = jax.tree.leaves(grad)
    assert all(bool(jnp.isfinite(g).all()) for g in leaves) and any(bool((g != 0).any()) for g in leaves)


def test_competitor_logits_give_a_sound_and_tighter_margin():
    """With ``competitors`` (a task head) the margin bounds beat the task's other logits only: never
    below the all-logit bound, and never above a sampled or attacked network's masked margin."""
    spec = SPECS[0]
    params = nets.init(spec, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (64, 6))
    head = jnp.array([True, True, False])
    logits = nets.apply(spec, params, x)
    y = jnp.where(logits[:, 0] > logits[:, 1], 0, 1)
    box = random_box(params, 0.05, 3)
    for kind in bounds.BOUNDS:
        masked = bounds.output_bounds(spec, box, x, y, kind, competitors=head).margin_lo
        assert bool((masked >= bounds.output_bounds(spec, box, x, y, kind).margin_lo).all())
        attacked = audit.attacked_margins(spec, box, x, y, jax.random.key(2), steps=20, competitors=head)
        assert bool((attacked >= masked - 1e-5).all())
        wrong = audit.sampled_violations(spec, box, x, y, 200, jax.random.key(3), competitors=head)
        assert not bool((wrong & (masked > certificates.default_margin_tol(x.dtype))).any())
    assert float((masked > 0).mean()) > float((bounds.output_bounds(spec, box, x, y, "linear").margin_lo > 0).mean())


def test_unknown_bound_is_refused():
    spec = SPECS[0]
    params = nets.init(spec, jax.random.key(0))
    with pytest.raises(bounds.BoundError, match="bound must be 'interval' or 'linear', got 'crown'"):
        bounds.output_bounds(spec, domains.box_around(params), jnp.zeros((1, 6)), jnp.zeros(1, jnp.int32), "crown")


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    widths=st.lists(st.integers(1, 5), min_size=0, max_size=3),
    inputs=st.integers(1, 4),
    classes=st.integers(2, 4),
    log_scale=st.floats(-3.5, -0.5),
    seed=st.integers(0, 2**16),
)
def test_property_linear_bound_random_networks(widths, inputs, classes, log_scale, seed):
    spec = nets.MLPSpec((inputs,), tuple(widths), classes)
    key = jax.random.key(seed)
    params = nets.init(spec, key)
    x = 2 * jax.random.normal(jax.random.fold_in(key, 1), (6, inputs))
    y = jax.random.randint(jax.random.fold_in(key, 2), (6,), 0, classes)
    check_linear_sound(spec, random_box(params, 10.0 ** log_scale, seed), x, y, jax.random.fold_in(key, 3),
                       count=200, steps=15)


def test_optimised_slopes_are_sound_and_never_worse():
    spec = nets.MLPSpec((6,), (8, 8), 3)
    params = nets.init(spec, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (32, 6))
    y = nets.apply(spec, params, x).argmax(1)
    box = random_box(params, 0.05, 6)
    start = relaxation.margin_lower(spec, box.center, box.radius, x, y)
    tuned = relaxation.optimised_margin(spec, box.center, box.radius, x, y, steps=15)
    attacked = audit.attacked_margins(spec, box, x, y, jax.random.key(7), steps=20)
    assert bool((tuned >= start - 1e-6).all()) and bool((tuned > start + 1e-4).any())
    assert bool((attacked >= tuned - 1e-5).all())
