"""A small network fitted by full-batch Adam: the trained network the certify tests start from."""

import jax
import optax

from metaedit import nets


def fit(spec, x, y, key, steps: int = 300, learning_rate: float = 0.05):
    """``steps`` full-batch Adam steps of cross-entropy on (x, y) from ``nets.init(spec, key)``."""
    params = nets.init(spec, key)
    tx = optax.adam(learning_rate)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(nets.apply(spec, p, x), y).mean()  # noqa: E731
        updates, state = tx.update(jax.grad(loss)(params), state)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return params
