"""Certified edits: the projection keeps the edit's zeros, the inside and re-solved routes, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from certify import audit, certificates
from certify.certificates import CertificateError
from certify.domains import Box
from certify.solver import LIDConfig
from metaedit import certified, nets
from metaedit.requirements.pruning import Pruning
from tests.fitting import fit


class LightPruning(Pruning):
    """Pruning with targets down to 0, so that an edit zeroing a few weights complies."""

    target_range = (0.0, 0.99)


@pytest.fixture(scope="module")
def network(breast_cancer):
    spec = nets.parse_arch("mlp:8", breast_cancer.input_shape, breast_cancer.num_classes)
    x, y = jnp.asarray(breast_cancer.x_train), jnp.asarray(breast_cancer.y_train)
    return spec, fit(spec, x, y, jax.random.key(0), steps=200)


def _random_box(params, key):
    keys = iter(jax.random.split(key, 2 * len(jax.tree.leaves(params))))
    lo = jax.tree.map(lambda p: p - jax.random.uniform(next(keys), p.shape, maxval=0.1), params)
    hi = jax.tree.map(lambda p: p + jax.random.uniform(next(keys), p.shape, maxval=0.1), params)
    return Box(lo, hi)


def test_projection_keeps_the_mask_and_clips_the_rest(network):
    spec, params = network
    box = _random_box(params, jax.random.key(1))
    moved = jax.tree.map(lambda p: p + 0.5 * jax.random.normal(jax.random.key(2), p.shape), params)
    edited = jax.tree.map(lambda p: jnp.where(jnp.abs(p) < jnp.quantile(jnp.abs(p), 0.5), 0.0, p), moved)
    mask = certified.edit_mask(edited)
    projected = certified.project_keeping_mask(box, edited, mask)
    for m, q, lo, hi in zip(*(jax.tree.leaves(t) for t in (mask, projected, box.lo, box.hi))):
        assert m.any() and (q[m] == 0).all()  # every zero of the edit stays zero
        assert ((lo[~m] <= q[~m]) & (q[~m] <= hi[~m])).all()  # the rest lies in the box
    collapsed = certified.collapse_mask(box, mask)
    for m, lo, hi in zip(*(jax.tree.leaves(t) for t in (mask, collapsed.lo, collapsed.hi))):
        assert (lo[m] == 0).all() and (hi[m] == 0).all()


def test_bias_follows_the_edit(network):
    _, params = network
    edited = jax.tree.map(lambda p: p.at[..., 0].add(1.0), params)
    bias = certified.edit_bias(params, edited)
    for b in jax.tree.leaves(bias):
        assert (b >= 0.1).all() and (b[..., 0] > b[..., 1:].max() if b.shape[-1] > 1 else True).all()


def _edit_zeroing_smallest(params, count):
    """The network with its ``count`` smallest-magnitude kernel weights set to zero."""
    kernels = jnp.concatenate([p["kernel"].ravel() for p in params.values()])
    cut = jnp.sort(jnp.abs(kernels))[count]
    return {name: {**layer, "kernel": jnp.where(jnp.abs(layer["kernel"]) < cut, 0.0, layer["kernel"])}
            for name, layer in params.items()}


@pytest.mark.parametrize("zeroed, resolution", [(2, "inside"), (200, "re-solved")])
def test_certified_edit_is_compliant_inside_its_lid_and_keeps_the_zeros(network, breast_cancer, monkeypatch,
                                                                        zeroed, resolution):
    spec, params = network
    edited = _edit_zeroing_smallest(params, zeroed)
    monkeypatch.setattr(certified, "edit_network", lambda *args: (edited, 0.5, None))
    requirement = LightPruning()
    target = float(requirement.exact(spec, edited))
    result = certified.certified_edit(None, spec, requirement, params, breast_cancer, 0.5, 0.6, target,
                                      LIDConfig(steps=60, snapshot_every=20))
    assert result.resolution == resolution, result.message
    assert result.edit_complies and result.conflict == (resolution == "re-solved")
    assert result.certified and result.compliant and result.lower_bound >= 0.6
    domain = result.lids.best.domain
    assert domain.contains(result.params)
    for e, q, lo, hi in zip(*(jax.tree.leaves(t) for t in (edited, result.params, domain.lo, domain.hi))):
        zero = np.asarray(e) == 0
        assert (np.asarray(q)[zero] == 0).all()
        assert (np.asarray(lo)[zero] == 0).all() and (np.asarray(hi)[zero] == 0).all()
    # sampled parameters of the LID (corners included) classify every certified held-out row correctly
    rows = result.lids.heldout_rows
    x, y = jnp.asarray(breast_cancer.x_test[rows]), jnp.asarray(breast_cancer.y_test[rows])
    wrong = audit.sampled_violations(spec, domain, x, y, 256, jax.random.key(3))
    assert not (wrong & certificates.certified(spec, domain, x, y)).any()


def test_tau_outside_the_unit_interval_is_a_clear_error(network, breast_cancer):
    spec, params = network
    with pytest.raises(CertificateError, match=r"tau must lie in \(0, 1\], got 1.5"):
        certified.certified_edit(None, spec, LightPruning(), params, breast_cancer, 0.5, 1.5)
