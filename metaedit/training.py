"""The one training primitive: an optax step over any loss, and the losses and statistics it shares.

Every optimiser loop of the project (zoo members, the editor, fine-tuning baselines, continual
learning baselines, safe updates) is a :func:`make_step` over a loss and an optax transformation,
run under ``jax.lax.scan`` by its caller:

    step = make_step(tx, loss)                      # loss(params, batch) -> scalar
    state, metrics = jax.lax.scan(lambda s, b: step(s, b), init_state(params, tx), batches)

``step`` is a pure function, so callers jit it at their boundary (a chunk, a whole run) and vmap
it over populations. A constraint on the parameters is the step's ``project`` (a certified
domain's exact projection).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaedit import nets

MASKED_LOGIT = -1e9  # what masked-out logits are set to (finite, so gradients stay finite)


class Batch(NamedTuple):
    """One batch of examples: x [B, *input_shape], y [B] int labels; optionally s [B] (the sensitive
    attribute), mask [B, C] (the logits that take part, for multi-head continual learning) and
    weight [B] (each row's weight in a measurement that reads it, e.g. the population's share of its
    cell in rows stratified over cells)."""

    x: Any
    y: Any
    s: Any = None
    mask: Any = None
    weight: Any = None


class TrainState(NamedTuple):
    """What an optimiser loop carries: the parameters, the optax state and the step count."""

    params: Any
    opt_state: Any
    step: Any


def init_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
    """The state before the first step (step 0)."""
    return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))


def make_step(tx: optax.GradientTransformation, loss: Callable | None = None, *, has_aux: bool = False,
              gradients: Callable | None = None,
              project: Callable | None = None) -> Callable[[TrainState, Any], tuple[TrainState, Any]]:
    """One optimiser step ``step(state, batch) -> (state, metrics)``.

    Either ``loss(params, batch)`` (a scalar, or ``(scalar, metrics)`` with ``has_aux``; metrics
    default to ``{"loss": value}``) or ``gradients(params, batch) -> (grads, metrics)`` for methods
    that shape their gradient themselves (e.g. A-GEM's projection). ``project(params) -> params``
    (e.g. a certified domain's projection) is applied to the updated parameters, exactly: an
    update folded into the optax transformation lands inside only up to rounding.
    """
    if (loss is None) == (gradients is None):
        raise ValueError("make_step needs exactly one of loss and gradients")
    if gradients is None:
        def gradients(params, batch):
            if has_aux:
                (_, metrics), grads = jax.value_and_grad(loss, has_aux=True)(params, batch)
                return grads, metrics
            value, grads = jax.value_and_grad(loss)(params, batch)
            return grads, {"loss": value}

    def step(state: TrainState, batch: Any) -> tuple[TrainState, Any]:
        grads, metrics = gradients(state.params, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params if project is None else project(params), opt_state, state.step + 1), metrics

    return step


def masked_logits(logits: jax.Array, mask: jax.Array | None) -> jax.Array:
    """logits [..., C] with the entries where ``mask`` [..., C] is False set to :data:`MASKED_LOGIT`."""
    return logits if mask is None else jnp.where(mask, logits, MASKED_LOGIT)


def cross_entropy(spec: nets.Spec, params: nets.Params, x: jax.Array, y: jax.Array,
                  mask: jax.Array | None = None) -> jax.Array:
    """Mean softmax cross-entropy of the network on x [B, ...], y [B] (logits outside ``mask`` [B, C]
    excluded)."""
    logits = masked_logits(nets.apply(spec, params, x), mask)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def batch_loss(spec: nets.Spec) -> Callable[[nets.Params, Batch], jax.Array]:
    """``loss(params, batch)``: the cross-entropy of ``spec`` on a :class:`Batch` (its mask included)."""
    return lambda params, batch: cross_entropy(spec, params, batch.x, batch.y, batch.mask)


def empirical_fisher(spec: nets.Spec, params: nets.Params, x: jax.Array, y: jax.Array,
                     weight: jax.Array | None = None, mask: jax.Array | None = None,
                     chunk: int = 32) -> nets.Params:
    """The diagonal empirical Fisher: the (weighted) mean over samples of the squared gradient of
    each sample's loss at its true label; a pytree like ``params``.

    x [n, ...], y [n], weight [n] (0 drops a sample, e.g. padding; default all 1), mask [C] (the
    output mask of the task). Per-sample gradients are computed ``chunk`` samples at a time.
    """
    n = y.shape[0]
    weight = jnp.ones(n, x.dtype) if weight is None else weight.astype(x.dtype)
    pad = -n % chunk
    x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]).reshape((-1, chunk) + x.shape[1:])
    y = jnp.concatenate([y, jnp.zeros(pad, y.dtype)]).reshape(-1, chunk)
    w = jnp.concatenate([weight, jnp.zeros(pad, weight.dtype)]).reshape(-1, chunk)
    one_mask = None if mask is None else mask[None]

    def one(xi, yi):
        return jax.grad(cross_entropy, argnums=1)(spec, params, xi[None], yi[None], one_mask)

    def body(total, inputs):
        xc, yc, wc = inputs
        grads = jax.vmap(one)(xc, yc)
        return jax.tree.map(lambda acc, g: acc + jnp.tensordot(wc.astype(g.dtype), g ** 2, axes=1), total, grads), None

    total, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), (x, y, w))
    return jax.tree.map(lambda t: t / jnp.maximum(weight.sum(), 1e-12).astype(t.dtype), total)
