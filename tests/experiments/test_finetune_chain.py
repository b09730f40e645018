"""A link of the certified fine-tuning chain: solved on the certification rows alone, checked on the
held-out rows at the Bonferroni-corrected confidence; the chain's schedule places every box at the
start of a part of the fine-tuning, evenly spaced, and the parts cover every step once."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from certify import certificates
from certify.continual import safe
from certify.solver import LIDConfig
from experiments import finetune
from metaedit import nets


def test_a_link_is_shaped_by_certification_rows_only_and_checked_on_heldout_rows(digits):
    spec = nets.MLPSpec(digits.input_shape, (8,), digits.num_classes)
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    params = safe.projected_steps_jit(spec, nets.init(spec, jax.random.key(0)), None, x, y, 300, 3e-3, 64,
                                      jax.random.key(1))
    rows = (np.arange(0, 270), np.arange(270, 540))
    solver = LIDConfig(steps=40, snapshot_every=20)
    hx, hy = jnp.asarray(digits.x_test[rows[1]]), jnp.asarray(digits.y_test[rows[1]])
    accuracy = float((nets.apply(spec, params, hx).argmax(-1) == hy).mean())
    tau = round(accuracy - 0.15, 2)
    box, check = finetune.chain_box(spec, params, digits, rows, tau, 4, solver)
    assert box is not None and box.contains(params)
    assert check.lower_bound >= tau and check.heldout_samples == 270
    # the check's bound is at confidence 1 - 0.05 / 4: below the 95% one on the same rows
    plain = certificates.certificate(spec, box, certificates.Constraint(hx, hy, tau), hx, hy, 0.95)
    assert check.lower_bound < plain.lower_bound
    # held-out labels scrambled: the same box is solved (no held-out row shapes it), and it fails its check
    scrambled = digits.y_test.copy()
    scrambled[rows[1]] = (scrambled[rows[1]] + 1) % digits.num_classes
    failed, failed_check = finetune.chain_box(spec, params, dataclasses.replace(digits, y_test=scrambled), rows, tau, 4,
                                              solver)
    assert failed is None and failed_check.lower_bound < tau
    assert failed_check.certified_accuracy == check.certified_accuracy  # the same box, on the same certification rows
    again, _ = finetune.chain_box(spec, params, digits, rows, 1.0, 4, solver)  # unreachable tau: no box
    assert again is None
    with pytest.raises(ValueError, match=r"recentre must lie in \[1, epochs x steps_per_epoch = 20\], got 21"):
        finetune.Config(epochs=2, steps_per_epoch=10, recentre=21)


@pytest.mark.parametrize("epochs, steps, links", [(40, 25, 40), (40, 25, 30), (3, 10, 7), (2, 5, 1), (1, 4, 9)])
def test_the_chains_schedule_covers_every_step_once_with_evenly_spaced_boxes(epochs, steps, links):
    total = epochs * steps
    starts = finetune.chain_starts(total, links)
    assert starts[0] == 0 and len(starts) == min(links, total) and starts == sorted(set(starts))
    gaps = np.diff(starts + [total])
    assert gaps.min() >= 1 and gaps.max() - gaps.min() <= 1  # evenly spaced, to a step
    parts = [finetune.epoch_parts(epoch, steps, starts) for epoch in range(epochs)]
    flat = [part for epoch in parts for part in epoch]
    assert flat[0][0] == 0 and flat[-1][1] == total
    assert all(b == c for (_, b), (c, _) in zip(flat[:-1], flat[1:])) and all(a < b for a, b in flat)  # contiguous
    for epoch, ranges in enumerate(parts):  # no part crosses an epoch's end
        assert ranges[0][0] == epoch * steps and ranges[-1][1] == (epoch + 1) * steps
    assert set(starts) <= {a for a, _ in flat}  # every box starts a part
    assert {a for a, _ in flat} == set(starts) | {e * steps for e in range(epochs)}  # and parts split nowhere else
