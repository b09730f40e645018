"""The distribution guarantee: fixed-sequence testing on held-out rows, frozen unexercised parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from certify import audit, certificates, guarantee, lid
from certify.certificates import CertificateError
from certify.lid import LIDConfig
from metaedit import nets
from metaedit.datasets.base import Dataset
from tests.fitting import fit

SPEC = nets.MLPSpec((5,), (6,), 2)
FAST = LIDConfig(steps=60, snapshot_every=20, learning_rate=0.2, init_log_radius=-3.0)


def draw(key, n):
    """A linearly separable task on 4 inputs, with a fifth input that is always zero."""
    x = jax.random.normal(key, (n, 5)).at[:, 4].set(0.0)
    return np.asarray(x), np.asarray((x @ jnp.array([1.0, -1.0, 0.5, 0.0, 0.0]) > 0).astype(jnp.int32))


@pytest.fixture(scope="module")
def trained():
    x, y = draw(jax.random.key(0), 600)
    x_test, y_test = draw(jax.random.key(1), 1200)
    params = fit(SPEC, x, y, jax.random.key(1))
    return params, Dataset("synthetic", x, y, x_test, y_test, 2)


@pytest.mark.parametrize("bound", ["interval", "linear"])
def test_distribution_guarantee_holds_on_heldout_rows_and_freezes_unused_weights(trained, bound):
    params, data = trained
    found = lid.for_network(SPEC, params, data, 0.85, LIDConfig(**{**FAST.__dict__, "bound": bound}), seed=1)
    (best,) = found.lids
    (cert,) = best.certificates
    assert cert.guarantee == "distribution" and cert.holds and cert.lower_bound >= 0.85
    assert cert.lower_bound == pytest.approx(certificates.clopper_pearson_lower(
        round(cert.heldout_certified_accuracy * cert.heldout_samples), cert.heldout_samples, 0.95))
    assert len(found.cert_rows) == 600 and len(found.heldout_rows) == 600  # half of the test rows each
    assert found.target > 0.85 and found.scale_test.scale is not None
    # the always-zero input's weights are frozen: zero width, counted apart
    assert found.frozen == 6
    widths = best.domain.radius["dense_0"]["kernel"]
    assert float(jnp.abs(widths[4]).max()) == 0.0 and float(widths[:4].min()) > 0
    # an audit on the held-out rows: no certified sample is misclassified anywhere in the box
    hx, hy = jnp.asarray(data.x_test[found.heldout_rows]), jnp.asarray(data.y_test[found.heldout_rows])
    hits = certificates.certified(SPEC, best.domain, hx, hy, bound=bound)
    wrong = audit.sampled_violations(SPEC, best.domain, hx, hy, 500, jax.random.key(2))
    attacked = audit.attacked_margins(SPEC, best.domain, hx[:200], hy[:200], jax.random.key(3), steps=15)
    assert not bool((wrong & hits).any()) and not bool(((attacked <= 0) & hits[:200]).any())


def test_samples_guarantee_is_the_certified_accuracy(trained):
    params, data = trained
    found = lid.for_network(SPEC, params, data, 0.85, FAST, 300, 300, guarantee_kind="samples",
                            freeze_unexercised=False)
    cert = found.best.certificates[0]
    assert cert.guarantee == "samples" and cert.certified_accuracy >= 0.85 and found.frozen == 0
    assert found.target == 0.85 and len(found.lids) > 1  # every snapshot, certified on the samples


def test_fixed_sequence_controls_the_error_where_picking_the_best_does_not():
    """Many candidates just below tau: testing them all and keeping the largest that passes picks a
    bad one far more often than 1 - confidence; the fixed sequence stays within it."""
    rng = np.random.default_rng(0)
    tau, confidence, trials = 0.8, 0.9, 200
    rates = np.array([0.9, 0.86] + [0.79] * 30)  # by scale: only the first two meet tau
    scales = np.arange(1, len(rates) + 1, dtype=float)
    fixed_errors = best_errors = 0
    runs = 400
    for _ in range(runs):
        hits = rng.binomial(trials, rates)  # independent per candidate (a bound need not be monotone)
        test = guarantee.fixed_sequence_test(lambda s: hits[int(s) - 1], trials, scales, tau, confidence)
        fixed_errors += test.scale is not None and rates[int(test.scale) - 1] < tau
        passing = [k for k in range(len(rates))
                   if certificates.clopper_pearson_lower(int(hits[k]), trials, confidence) >= tau]
        best_errors += bool(passing) and rates[max(passing)] < tau
    assert fixed_errors / runs <= 1 - confidence + 0.03
    assert best_errors / runs > 2 * (1 - confidence)


def test_fixed_sequence_keeps_the_last_scale_before_the_first_failure():
    hits = {1.0: 100, 2.0: 97, 3.0: 60, 4.0: 100}
    test = guarantee.fixed_sequence_test(hits.__getitem__, 100, [1.0, 2.0, 3.0, 4.0], 0.9, 0.95)
    assert test.scale == 2.0 and test.hits == 97 and len(test.tested) == 3
    assert test.lower_bound == pytest.approx(certificates.clopper_pearson_lower(97, 100, 0.95))
    assert guarantee.fixed_sequence_test(lambda s: 0, 100, [1.0], 0.5, 0.95).scale is None
    with pytest.raises(CertificateError, match="increasing"):
        guarantee.fixed_sequence_test(hits.__getitem__, 100, [2.0, 1.0], 0.9, 0.95)


def test_needed_rate_and_solver_target():
    rate = guarantee.needed_rate(0.8, 1000, 0.95)
    assert certificates.clopper_pearson_lower(round(rate * 1000), 1000, 0.95) >= 0.8
    assert certificates.clopper_pearson_lower(round(rate * 1000) - 1, 1000, 0.95) < 0.8
    assert guarantee.needed_rate(0.99, 20, 0.95) == float("inf")
    assert guarantee.solve_target(0.8, 1000, 0.95, 0.01, 0.95) == pytest.approx(rate + 0.01)
    assert guarantee.solve_target(0.8, 1000, 0.95, 0.01, 0.81) == 0.81


def test_bad_guarantee_inputs(trained):
    params, data = trained
    with pytest.raises(CertificateError, match=r"tau must lie in \(0, 1\], got 1.2"):
        lid.for_network(SPEC, params, data, 1.2, FAST)
    with pytest.raises(CertificateError, match=r"tau must lie in \(0, 1\], got 0"):
        lid.for_network(SPEC, params, data, 0, FAST)
    with pytest.raises(CertificateError, match=r"confidence must lie in \(0, 1\), got 1.0"):
        lid.for_network(SPEC, params, data, 0.8, FAST, confidence=1.0)
    with pytest.raises(CertificateError, match="guarantee must be 'distribution' or 'samples'"):
        lid.for_network(SPEC, params, data, 0.8, FAST, guarantee_kind="always")
    with pytest.raises(CertificateError, match="exceed the 1200 test rows"):
        lid.for_network(SPEC, params, data, 0.8, FAST, 1000, 1000)
    with pytest.raises(lid.LIDError, match="the network itself classifies .* lower tau"):
        lid.for_network(SPEC, params, data, 1.0, FAST)
    with pytest.raises(CertificateError, match="two non-empty, disjoint sets"):
        lid.for_network(SPEC, params, data, 0.8, FAST, rows=(np.arange(10), np.arange(5, 20)))
    with pytest.raises(CertificateError, match="must index the 1200 test rows; got 0 .. 1200"):
        lid.for_network(SPEC, params, data, 0.8, FAST, rows=(np.arange(10), np.array([1200])))
