"""Data-aware node features: what they hold, and that they permute with their neurons."""

import jax
import jax.numpy as jnp
import numpy as np

from metaedit import graphs, nets, probe, requirements
from metaedit.training import Batch
from tests.symmetries import permute_hidden

SPEC = nets.MLPSpec((6,), (5, 4), 2)


def test_probe_features_are_equivariant_and_say_what_they_hold():
    params = nets.init(SPEC, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (64, 6))
    batch = Batch(x, (x[:, 0] > 0).astype(jnp.int32), (x[:, 1] > 0).astype(jnp.int32))
    stats = np.asarray(probe.node_features(SPEC, params, batch, num_groups=2))
    topo = graphs.topology(SPEC)
    assert stats.shape == (topo.num_nodes, probe.NUM_FEATURES) and np.isfinite(stats).all()
    acts, _ = probe.activations(SPEC, params, x)
    np.testing.assert_allclose(stats[:, 2], (np.asarray(acts) > 0).mean(0), atol=1e-6)  # active fraction
    assert abs(stats[0, 3]) > 0.3  # input 0 defines the label: a strong label association
    whole = np.asarray(probe.graph_features(SPEC, params, batch, num_groups=2))
    hard = (np.asarray(nets.apply(SPEC, params, x)).argmax(-1) == 1).astype(np.float32)
    gaps = requirements.equalised_odds_gaps(batch.y, jnp.asarray(hard), batch.s)
    np.testing.assert_allclose(whole[2:4], gaps, atol=1e-6)  # the hard gap at each label
    np.testing.assert_allclose(whole[5], (np.asarray(nets.apply(SPEC, params, x)).argmax(-1) == np.asarray(batch.y)).mean(),
                               atol=1e-6)
    for seed in range(3):
        other, perms = permute_hidden(SPEC, params, np.random.default_rng(seed))
        moved = np.asarray(probe.node_features(SPEC, other, batch, num_groups=2))
        order = np.arange(topo.num_nodes)
        for perm, (start, end) in zip(perms, topo.node_slices[:-1]):
            order[start:end] = start + perm
        np.testing.assert_allclose(moved, stats[order], rtol=1e-4, atol=1e-5)
        # the whole network's statistics do not move at all
        np.testing.assert_allclose(probe.graph_features(SPEC, other, batch, 2), whole, rtol=1e-4, atol=1e-6)


def test_probe_rows_keep_small_cells():
    y = np.array([0] * 90 + [1] * 10)
    s = np.array([0, 1] * 45 + [0] * 9 + [1])
    rows = probe.probe_rows(y, s, 20)
    cells = np.bincount(s[rows] * 2 + y[rows], minlength=4)
    sizes = np.bincount(s * 2 + y, minlength=4)  # 45, 9, 45 and 1 rows
    assert len(rows) == 20 and len(set(rows)) == 20
    assert (cells >= np.minimum(sizes, 20 // 4)).all() and cells[3] == 1  # the one-row cell is kept
