"""Test helper: the hidden-neuron permutation symmetry of a network."""

import jax
import numpy as np

from metaedit import nets


def permute_hidden(spec, params, rng):
    """``(params, perms)``: the neurons (channels) of every hidden layer permuted by ``perms[i]``,
    keeping the function."""
    names = [l.name for l in nets.layers(spec)]
    params = jax.tree.map(np.asarray, params)
    perms = []
    for i, name in enumerate(names[:-1]):
        perm = rng.permutation(params[name]["bias"].shape[0])
        perms.append(perm)
        params[name] = {"kernel": params[name]["kernel"][..., perm], "bias": params[name]["bias"][perm]}
        nxt = names[i + 1]
        params[nxt] = {**params[nxt], "kernel": params[nxt]["kernel"][..., perm, :]}
    return params, perms
