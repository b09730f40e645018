"""Soundness of parameter-space bounds: sampled parameters never break a certificate."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certify import audit, bounds, certificates, domains
from metaedit import nets

SPECS = [
    nets.MLPSpec((6,), (8, 5), 3),
    nets.CNNSpec((6, 6, 1), (3, 4), 3),
    nets.CNNSpec((10, 2), (4,), 3, padding="valid", head="flatten"),  # as the paper's CNN reads its map
]


def make_domain(kind, params, scale, seed):
    """A box with random asymmetric widths, or a zonotope with random generators, of size ``scale``."""
    rng = np.random.default_rng(seed)
    def draw(shape, like):
        return jnp.asarray(rng.uniform(size=shape), like.dtype)
    if kind == "box":
        return domains.Box(jax.tree.map(lambda p: p - scale * draw(p.shape, p), params),
                           jax.tree.map(lambda p: p + scale * draw(p.shape, p), params))
    radius = jax.tree.map(lambda p: jnp.full_like(p, scale / 2), params)
    generators = jax.tree.map(lambda p: (scale / 4) * (2 * draw((3,) + p.shape, p) - 1), params)
    return domains.Zonotope(params, radius, generators)


def sampled_logits(spec, domain, x, count, key):
    uniform = domain.sample(key, count)
    corners = domain.sample(jax.random.fold_in(key, 1), count, corners=True)
    return jnp.concatenate([_run(spec, uniform, x), _run(spec, corners, x)])  # [2 * count, B, C]


@functools.partial(jax.jit, static_argnums=0)
def _run(spec, stacked, x):
    return jax.vmap(lambda p: nets.apply(spec, p, x))(stacked)


def check_sound(spec, domain, x, y, count=1500, key=jax.random.key(9), attack_steps=0):
    """Sampled (and, with ``attack_steps``, per-sample attacked) logits and margins stay inside the bounds."""
    tol = certificates.default_margin_tol(x.dtype)
    atol = 1e-5 if x.dtype == jnp.float32 else 1e-12
    b = bounds.output_bounds(spec, domain, x, y)
    logits = sampled_logits(spec, domain, x, count, key)
    assert bool((logits >= b.logits_lo - atol).all()), "a sampled logit is below its lower bound"
    assert bool((logits <= b.logits_hi + atol).all()), "a sampled logit is above its upper bound"
    true = jnp.take_along_axis(logits, y[None, :, None], 2)[..., 0]
    best_other = jnp.where(jax.nn.one_hot(y, logits.shape[-1])[None] > 0, -jnp.inf, logits).max(-1)
    assert bool((true - best_other >= b.margin_lo - atol).all()), "a sampled margin is below its bound"
    certified = b.margin_lo > tol
    predictions = logits.argmax(-1)
    assert bool((predictions[:, certified] == y[certified]).all()), "a certified sample was misclassified"
    if attack_steps:
        attacked = audit.attacked_margins(spec, domain, x, y, jax.random.fold_in(key, 2), attack_steps)
        assert bool((attacked >= b.margin_lo - atol).all()), "an attacked margin is below its bound"
        assert not bool(((attacked <= 0) & certified).any()), "an attack misclassified a certified sample"
    return float(certified.mean())


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", ["box", "zonotope"])
@pytest.mark.parametrize("spec", SPECS, ids=nets.describe)
def test_sampled_parameters_never_break_the_certificate(spec, kind, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        params = jax.tree.map(lambda p: p.astype(dtype), nets.init(spec, jax.random.key(0)))
        x = jax.random.normal(jax.random.key(1), (48,) + spec.input_shape, dtype)
        y = nets.apply(spec, params, x).argmax(1)
        y = y.at[:6].set((y[:6] + 1) % spec.num_classes)  # some wrong labels: never certifiable
        attack = 15 if dtype == jnp.float64 else 0  # float64: the tightest tolerance
        fractions = [check_sound(spec, make_domain(kind, params, scale, 2), x, y, attack_steps=attack * (scale == 0.03))
                     for scale in (0.001, 0.03, 0.3)]
        assert fractions[0] > 0.3, "the smallest domain should certify many correctly classified samples"
        assert fractions[-1] < fractions[0], "a larger domain should certify fewer samples"
        b = bounds.output_bounds(spec, make_domain(kind, params, 0.001, 2), x, y)
        assert b.logits_lo.dtype == dtype and not bool((b.margin_lo[:6] > 0).any())


@pytest.mark.parametrize("spec", SPECS[:2], ids=nets.describe)
def test_zero_size_domain_gives_the_exact_logits(spec):
    params = nets.init(spec, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (5,) + spec.input_shape)
    for domain in (domains.box_around(params), domains.zonotope_around(params, 2)):
        b = bounds.output_bounds(spec, domain, x, jnp.zeros(5, jnp.int32))
        np.testing.assert_allclose(b.logits_lo, nets.apply(spec, params, x), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b.logits_hi, nets.apply(spec, params, x), rtol=1e-5, atol=1e-6)


def test_first_layer_box_bound_is_exact():
    """With a point input the first layer's range over a box is attained at box corners."""
    spec = nets.MLPSpec((4,), (), 2)  # one affine layer: its logits range is exact
    params = nets.init(spec, jax.random.key(0))
    box = domains.box_around(params, 0.1)
    x = jax.random.normal(jax.random.key(1), (3, 4))
    b = bounds.output_bounds(spec, box, x, jnp.zeros(3, jnp.int32))
    worst = params["dense_0"]["bias"] - 0.1 - (jnp.abs(x) * 0.1).sum(1, keepdims=True) + x @ params["dense_0"]["kernel"]
    np.testing.assert_allclose(b.logits_lo, worst, rtol=1e-5)


def test_zonotope_is_never_looser_than_its_interval_hull():
    spec = SPECS[0]
    params = nets.init(spec, jax.random.key(0))
    zonotope = make_domain("zonotope", params, 0.05, 3)
    x = jax.random.normal(jax.random.key(1), (32, 6))
    y = nets.apply(spec, params, x).argmax(1)
    affine = bounds.output_bounds(spec, zonotope, x, y).margin_lo
    hull = bounds.output_bounds(spec, zonotope.hull(), x, y).margin_lo
    assert bool((affine >= hull).all()) and bool((affine > hull).any())


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    widths=st.lists(st.integers(1, 5), min_size=0, max_size=2),
    inputs=st.integers(1, 4),
    classes=st.integers(2, 4),
    kind=st.sampled_from(["box", "zonotope"]),
    log_scale=st.floats(-4, 0),
    seed=st.integers(0, 2**16),
)
def test_property_random_networks_domains_inputs(widths, inputs, classes, kind, log_scale, seed):
    spec = nets.MLPSpec((inputs,), tuple(widths), classes)
    key = jax.random.key(seed)
    params = nets.init(spec, key)
    x = 2 * jax.random.normal(jax.random.fold_in(key, 1), (8, inputs))
    y = jax.random.randint(jax.random.fold_in(key, 2), (8,), 0, classes)
    check_sound(spec, make_domain(kind, params, 10.0 ** log_scale, seed), x, y,
                count=300, key=jax.random.fold_in(key, 4))


def test_clopper_pearson():
    assert certificates.clopper_pearson_lower(100, 100, 0.95) == pytest.approx(0.05 ** (1 / 100), rel=1e-9)
    assert certificates.clopper_pearson_lower(0, 50) == 0.0
    low = certificates.clopper_pearson_lower(80, 100, 0.95)
    assert 0.71 < low < 0.80
    with pytest.raises(certificates.CertificateError, match="at least one held-out sample"):
        certificates.clopper_pearson_lower(0, 0)


def test_domain_validation_names_the_problem():
    params = nets.init(SPECS[0], jax.random.key(0))
    box = domains.box_around(params, 0.1)
    box.validate(params)
    swapped = domains.Box(box.hi, box.lo)
    with pytest.raises(domains.DomainError, match=r"lo > hi at \['dense_0'\]\['bias'\]"):
        swapped.validate()
    nan = domains.Box(jax.tree.map(lambda l: l.at[..., 0].set(jnp.nan), box.lo), box.hi)
    with pytest.raises(domains.DomainError, match="holds NaN or Inf"):
        nan.validate()
    zonotope = domains.zonotope_around(params, 2, 0.1)
    zonotope.validate(params)
    bad = zonotope.replace(generators={**zonotope.generators, "dense_1": {
        "kernel": jnp.zeros((3, 8, 5)), "bias": jnp.zeros((2, 5))}})
    with pytest.raises(domains.DomainError, match="disagree on the rank axis"):
        bad.validate()
    wrong = zonotope.replace(generators={**zonotope.generators, "dense_1": {
        "kernel": jnp.zeros((2, 8, 4)), "bias": jnp.zeros((2, 5))}})
    with pytest.raises(domains.DomainError, match=r"generators\['dense_1'\]\['kernel'\] has shape \(2, 8, 4\)"):
        wrong.validate()
    with pytest.raises(domains.DomainError, match="radius.* is negative"):
        zonotope.replace(radius=jax.tree.map(lambda r: -r, zonotope.radius)).validate()


def test_log_volume():
    params = nets.init(nets.MLPSpec((2,), (), 2), jax.random.key(0))  # 6 parameters
    box = domains.box_around(params, 0.5)  # every width 1
    assert float(box.log_volume()) == pytest.approx(0.0, abs=1e-6)
    zonotope = domains.zonotope_around(params, 1, 0.5)
    grown = zonotope.replace(generators=jax.tree.map(lambda g: g + 0.25, zonotope.generators))
    # one generator: the bound is exact, 1 + sum |g_i| / r_i = 1 + 6 * 0.5
    assert float(grown.log_volume()) == pytest.approx(np.log(4.0), rel=1e-6)


def test_per_class_and_soft_certified_accuracy():
    spec = SPECS[0]
    params = nets.init(spec, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (60, 6))
    y = nets.apply(spec, params, x).argmax(1)
    y = y.at[:10].set((y[:10] + 1) % 3)
    box = domains.box_around(params, 1e-3)
    hits = np.asarray(certificates.certified(spec, box, x, y))
    per_class = certificates.per_class_certified_accuracy(spec, box, x, y, 3)
    y_np = np.asarray(y)
    for c in range(3):
        if (y_np == c).any():
            assert per_class[c] == pytest.approx(hits[y_np == c].mean())
    soft, hard = certificates.soft_and_hard_accuracy(spec, box, certificates.Constraint(x, y, 0.5), temperature=1e-3)
    assert float(hard) == pytest.approx(hits.mean())
    assert float(soft) == pytest.approx(hits.mean(), abs=0.05)
