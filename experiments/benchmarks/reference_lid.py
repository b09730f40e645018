"""A PyTorch peer of the reference "locally invariant domain" (Rashomon set) solver, for side-by-side benchmarks.

The reference is the safe-updates code in ``maxanisimov/capability-retention-in-continual-rl``
(``core/src/interval_utils.py:compute_rashomon_set`` with the interval-bounded model of
``core/abstract_gradient_training``; the surrogate lives in ``core/src/verification/verify.py``).
This module re-implements that algorithm for our parameter format (``{"dense_i": {"kernel": [in, out],
"bias": [out]}}``, ReLU between layers, logits from the last one); it is written from a reading of the
reference, not copied from it.

What the reference does (and this module with it)
-------------------------------------------------
* **Box parametrisation.** The box is stored directly as two free tensors per parameter, ``lo`` and
  ``hi`` (no log-widths, no centre/radius), both initialised at the trained parameters ``p``
  (``init_bbox = 0``: a zero-width box). After every update they are projected onto
  ``p - 10 <= lo <= p <= hi <= p + 10`` (``MAX_PARAMETER_WIDTH = 10``), so the box always contains ``p``.
* **Interval bound propagation** with the parameters perturbed and the input a point: each dense
  layer is Rump's midpoint-radius product, ``c = xc @ Wc``, ``r = |xc| @ Wr + xr @ |Wc| + xr @ Wr``,
  then ``[c - r + b_lo, c + r + b_hi]``; ReLU is applied to both ends. (This is the same arithmetic as
  our ``certify.bounds`` for a box, so margins agree to float rounding.)
* **Certificate.** A sample is certified when ``logit_lo[y] > max_{j != y} logit_hi[j]`` (the reference's
  "any"-mode admissible-set check with a one-hot admissible set). The dataset-level requirement
  "at least ``tau`` of the samples certified" is an exact order statistic: the k-th smallest per-sample
  value, ``k = floor((1 - tau) n + 1e-9) + 1``, must be positive (``torch.kthvalue``; its gradient is
  one-hot on the selected sample).
* **Surrogate of certified accuracy.** Worst-case logits (``logit_lo`` for the true class, ``logit_hi``
  for the others) through ``softmax(. / T)``; per-sample margin ``p_true - m / (m + 1)`` with ``m = 1``
  admissible class, i.e. ``p_true - 1/2``; aggregated with the same order statistic. The temperature
  ``T`` is calibrated once on the nominal (zero-width) model: the first of ``0.1, 0.2, 0.4, ... , 100``
  at which the aggregated margin is positive (for two classes ``p_true > 1/2`` iff the hard margin is
  positive, so ``T = 0.1`` whenever the nominal model meets ``tau``).
* **Preconditions.** If the nominal model does not meet ``tau`` on the certificate batch the reference
  skips the optimisation and returns the zero-width box (so do we: ``steps = 0``); ``tau <= 0`` returns
  the full ``p +- 10`` box.
* **Constrained problem.** Maximise ``sum(hi - lo) / n_params`` (``obj_alpha = 0``: width only, no
  log-volume) subject to ``g = -surrogate <= 0``. Cooper (``cooper-optim`` 1.0.1, as pinned by the
  reference) with one inequality constraint, ``AugmentedLagrangian`` formulation, a ``DenseMultiplier``
  initialised at 0, a ``DensePenaltyCoefficient`` initialised at ``penalty_coefficient = 1`` and updated
  by ``MultiplicativePenaltyCoefficientUpdater(growth_factor=1.01, violation_tolerance=0.05)`` (with
  its default restart), clamped at 1e3. The ``strict_violation`` given to Cooper (used for the dual
  step and the penalty update) is ``-hard``, where ``hard`` is the order statistic of the 0/1 per-sample
  hard certificate.
* **Optimiser.** ``cooper.optim.AlternatingDualPrimalOptimizer``: dual step first (``SGD(lr=0.1,
  maximize=True)`` on the multiplier, projected to >= 0), then a primal step on the augmented Lagrangian
  ``-objective + (relu(lambda + rho g)^2 - lambda^2) / (2 rho)`` with ``Adam(lr = 0.1 / n_params)`` over
  all ``lo`` and ``hi`` tensors. Learning-rate schedule (``use_schedule = True``): a shared factor ``m``
  (starting at 1, clamped to [1/20, 20]) is divided by 1.1 when the strict violation exceeds 0.05 and
  multiplied by 1.1 when it is negative; the primal lr is ``base * m``, the dual lr ``base / m``.
* **Data.** Minibatches of ``batch_size = 500`` from a shuffled ``DataLoader`` (seeded generator, last
  partial batch kept); the certificate batch is one shuffled draw of ``certificate_samples = 1000``
  (seeded likewise), used for calibration and the preconditions. Each step evaluates the bounds twice
  on its minibatch (the soft surrogate with gradients and the hard check), projects the box before
  computing the state and again after the step, as the reference does. The reference's default is
  ``n_iters = 2000``; here the caller passes ``steps``.

Quirk of the reference, kept as is: ``hard`` is 0 or 1, so the strict violation is 0 or -1 and never
positive. The multiplier therefore never leaves 0, the penalty coefficient is restarted to its
initial value at every step (the constraint always looks feasible to the updater), and the primal lr
factor only ever grows (x1.1 on every step whose minibatch meets ``tau``, up to 20x). In effect the
augmented Lagrangian is the fixed quadratic penalty ``rho/2 * relu(-surrogate)^2`` with ``rho = 1``.
Cooper's updates are written out here in torch (no ``cooper-optim`` dependency): when this module
was written, the same steps run through Cooper 1.0.1 gave a bit-identical box (largest difference
0.0).

What we had to choose
---------------------
* Only what a ReLU MLP needs is implemented: no groups (``group_by``), context masks, parameter masks,
  outer boxes, custom objectives, checkpoints, early stopping at a target, CROWN/zonotope growth or
  certification methods, or input intervals. The returned box is the final one (the reference's
  single "checkpoint" when ``checkpoint = -1``), whether or not it meets ``tau``.
* ``certified_accuracy`` is over all of ``(x, y)``, not just the reference's certificate batch.
* The reference's interval checks (``validate_interval``: a ``max(lo - hi).item()`` at every layer that
  only logs) are reproduced when ``validate=True`` (the default) so that step times carry the same
  overheads; tqdm and printing are left out. Timing is torch on CPU with the default thread count;
  ``seconds_per_step`` is the median of the per-step wall times after ``warmup`` steps (the median,
  not the mean, because a shared CPU makes single steps spike by 10-100x).
* ``loader="indexed"`` draws the same minibatches as the ``DataLoader`` by indexing, without
  per-sample collation.
* ``seed`` seeds both data generators (the reference's default seed is 42).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

LOGGER = logging.getLogger(__name__)

MAX_PARAMETER_WIDTH = 10.0
"""The reference's projection radius around the trained parameters."""

TEMPERATURE_START, TEMPERATURE_CAP = 0.1, 100.0
"""The reference's calibration range for the softmax temperature (doubling from the start)."""


class ReferenceResult(NamedTuple):
    """The reference solver's final box and how it was obtained."""

    lo: dict
    hi: dict
    seconds_per_step: float
    """Median wall time of one optimisation step after ``warmup`` steps (nan when no step ran)."""
    certified_accuracy: float
    """Fraction of (x, y) whose interval margin lower bound over the final box is > 0."""
    steps: int
    temperature: float = float("nan")
    """The calibrated softmax temperature (nan when the optimisation was skipped)."""
    surrogate: float = float("nan")
    """The order-statistic surrogate margin of the final box on the certificate batch."""
    mean_seconds_per_step: float = float("nan")
    """Mean wall time of one optimisation step after ``warmup`` steps (of every step when no more ran;
    nan when none ran)."""


# --------------------------------------------------------------------------------------------------
# Interval bounds (the reference's IntervalBoundedModel with Rump's product, for our format)


def _layer_names(params: dict) -> list[str]:
    names = sorted(params, key=lambda name: int(name.rsplit("_", 1)[1]))
    if not names or any(not name.startswith("dense_") for name in names):
        raise ValueError(f"expected dense_0, dense_1, ... layers, got {list(params)}")
    return names


def _check(lower: torch.Tensor, upper: torch.Tensor, what: str) -> None:
    """The reference's interval validation: one max-reduction and host sync, only ever logging."""
    diff = torch.max(lower - upper).item()
    if diff > 1e-6:
        LOGGER.debug("violated bound: %.2e (%s)", diff, what)


def _midpoint_radius_matmul(a_l, a_u, b_l, b_u, validate: bool):
    if validate:
        _check(a_l, a_u, "matmul A")
        _check(b_l, b_u, "matmul B")
    a_c, a_r = (a_u + a_l) / 2, (a_u - a_l) / 2
    b_c, b_r = (b_u + b_l) / 2, (b_u - b_l) / 2
    centre = a_c @ b_c
    radius = a_c.abs() @ b_r + a_r @ b_c.abs() + a_r @ b_r
    out_l, out_u = centre - radius, centre + radius
    if validate:
        _check(out_l, out_u, "matmul out")
    return out_l, out_u


def _logit_bounds(lo: list, hi: list, x: torch.Tensor, validate: bool = False):
    """Logit bounds [n, C] over the box (lists of (kernel, bias) tensors) for point inputs x [n, in]."""
    h_l, h_u = x, x
    if validate:
        _check(h_l, h_u, "input")
    last = len(lo) - 1
    for i, ((w_l, b_l), (w_u, b_u)) in enumerate(zip(lo, hi)):
        h_l, h_u = _midpoint_radius_matmul(h_l, h_u, w_l, w_u, validate)
        h_l, h_u = h_l + b_l, h_u + b_u
        if validate:
            _check(h_l, h_u, f"dense_{i}")
        if i < last:
            h_l, h_u = torch.relu(h_l), torch.relu(h_u)
            if validate:
                _check(h_l, h_u, f"relu_{i}")
    return h_l, h_u


def _worst_case_logits(logits_l, logits_u, onehot):
    return onehot * logits_l + (1 - onehot) * logits_u


def _hard_margin(logits_l, logits_u, onehot):
    """logit_lo[y] - max_{j != y} logit_hi[j] (positive: certified)."""
    true_lower = logits_l.masked_fill(onehot == 0, float("-inf")).max(1).values
    other_upper = logits_u.masked_fill(onehot != 0, float("-inf")).max(1).values
    return true_lower - other_upper


def _hard_certified(logits_l, logits_u, onehot):
    """The reference's per-sample 0/1 hard certificate ("any" mode, one admissible class)."""
    has_other = (onehot == 0).any(1)
    return ((_hard_margin(logits_l, logits_u, onehot) > 0) | ~has_other).float()


def _soft_margin(logits_l, logits_u, onehot, temperature: float):
    """The reference's probability surrogate: softmax mass on the admissible set minus m / (m + 1)."""
    probs = torch.softmax(_worst_case_logits(logits_l, logits_u, onehot) / temperature, dim=1)
    admissible = onehot.sum(1)
    return (probs * onehot).sum(1) - admissible / (1 + admissible)


def _order_statistic_rank(tau: float, n: int) -> int:
    return max(1, min(n, int((1.0 - tau) * n + 1e-9) + 1))


def _order_statistic(values: torch.Tensor, tau: float) -> torch.Tensor:
    return torch.kthvalue(values, _order_statistic_rank(tau, values.numel())).values


def _to_torch_box(params: dict, lo: dict, hi: dict) -> tuple[list, list]:
    names = _layer_names(params)

    def layers(box: dict) -> list:
        return [tuple(torch.tensor(np.array(box[n][k], np.float32)) for k in ("kernel", "bias")) for n in names]

    return layers(lo), layers(hi)


def interval_margin_lower(params: dict, lo: dict, hi: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample lower bound [n] on ``logit_y - max_{j != y} logit_j`` over the box ``[lo, hi]``, by the
    reference's interval bounds (torch, float32). ``params`` fixes the layer order and shapes."""
    for name in _layer_names(params):
        for key in ("kernel", "bias"):
            shape = np.shape(params[name][key])
            if np.shape(lo[name][key]) != shape or np.shape(hi[name][key]) != shape:
                raise ValueError(f"{name}/{key}: box shape differs from the params' {shape}")
    box_l, box_u = _to_torch_box(params, lo, hi)
    xt = torch.tensor(np.array(x, np.float32)).reshape(len(x), -1)
    with torch.no_grad():
        logits_l, logits_u = _logit_bounds(box_l, box_u, xt)
        onehot = torch.nn.functional.one_hot(torch.tensor(np.array(y, np.int64)), logits_l.shape[1]).float()
        return _hard_margin(logits_l, logits_u, onehot).numpy()


# --------------------------------------------------------------------------------------------------
# The constrained optimisation


class _Box:
    """The reference's trainable box: lo/hi leaf tensors per parameter, plus the nominal parameters."""

    def __init__(self, params: dict, init_bbox: float):
        self.names = _layer_names(params)
        self.nominal = [torch.tensor(np.array(params[n][k], np.float32)) for n in self.names
                        for k in ("kernel", "bias")]
        self.lo = [(p - init_bbox).clone().requires_grad_(True) for p in self.nominal]
        self.hi = [(p + init_bbox).clone().requires_grad_(True) for p in self.nominal]
        self.n_params = sum(p.numel() for p in self.nominal)

    def layers(self) -> tuple[list, list]:
        """(kernel, bias) pairs of lo and of hi, layer by layer."""
        return list(zip(self.lo[::2], self.lo[1::2])), list(zip(self.hi[::2], self.hi[1::2]))

    @torch.no_grad()
    def project(self) -> None:
        for l, p, u in zip(self.lo, self.nominal, self.hi):
            l.clamp_(min=p - MAX_PARAMETER_WIDTH, max=p)
            u.clamp_(min=p, max=p + MAX_PARAMETER_WIDTH)

    def objective(self, alpha: float) -> torch.Tensor:
        """alpha * log-volume + (1 - alpha) * width, per parameter (the reference's default objective)."""
        logvol = sum(torch.log(u - l + 1e-6).sum() for l, u in zip(self.lo, self.hi))
        width = sum((u - l).sum() for l, u in zip(self.lo, self.hi))
        return (alpha * logvol + (1 - alpha) * width) / self.n_params

    def width(self) -> float:
        with torch.no_grad():
            return float(sum((u - l).sum() for l, u in zip(self.lo, self.hi)))

    def export(self) -> tuple[dict, dict]:
        def tree(ts: list) -> dict:
            return {n: {"kernel": ts[2 * i].detach().numpy().copy(), "bias": ts[2 * i + 1].detach().numpy().copy()}
                    for i, n in enumerate(self.names)}

        return tree(self.lo), tree(self.hi)


class _Batches:
    """Endless minibatches: the reference's shuffled DataLoader, or the same batches by indexing."""

    def __init__(self, x, onehot, batch_size: int, seed: int, loader: str):
        self.x, self.onehot, self.batch_size = x, onehot, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.loader = loader
        if loader == "dataloader":
            self.dataloader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, onehot),
                                                          batch_size=batch_size, shuffle=True,
                                                          generator=self.generator)
        elif loader != "indexed":
            raise ValueError(f"loader must be 'dataloader' or 'indexed', got {loader!r}")
        self.iterator = self._epoch()

    def _epoch(self):
        if self.loader == "dataloader":
            return iter(self.dataloader)
        # the DataLoader's generator use per epoch: a base seed for workers, then RandomSampler's
        # permutation and a second one it discards (its tail of length num_samples % n = 0)
        n = len(self.x)
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        order = torch.randperm(n, generator=self.generator)
        torch.randperm(n, generator=self.generator)
        return iter([(self.x[idx], self.onehot[idx]) for idx in order.split(self.batch_size)])

    def next(self):
        try:
            return next(self.iterator)
        except StopIteration:
            self.iterator = self._epoch()
            return next(self.iterator)


class _State(NamedTuple):
    loss: torch.Tensor  # -objective (differentiable)
    violation: torch.Tensor  # -surrogate (differentiable)
    strict_violation: torch.Tensor  # -hard order statistic (0 or -1)


class _Problem:
    """Objective and constraint on one minibatch, as the reference's CMP computes them."""

    def __init__(self, box: _Box, batches: _Batches, tau: float, temperature: float, obj_alpha: float,
                 validate: bool):
        self.box, self.batches, self.tau, self.temperature = box, batches, tau, temperature
        self.obj_alpha, self.validate = obj_alpha, validate
        self.last_strict = 0.0

    def state(self) -> _State:
        x, onehot = self.batches.next()
        self.box.project()
        loss = -self.box.objective(self.obj_alpha)
        lo, hi = self.box.layers()
        logits_l, logits_u = _logit_bounds(lo, hi, x, self.validate)
        surrogate = _order_statistic(_soft_margin(logits_l, logits_u, onehot, self.temperature), self.tau)
        logits_l, logits_u = _logit_bounds(lo, hi, x, self.validate)  # the reference bounds twice
        hard = _order_statistic(_hard_certified(logits_l, logits_u, onehot), self.tau)
        self.last_strict = float(-hard)
        return _State(loss, -surrogate, -hard)


def _schedules(primal_optimizer, dual_optimizer, problem: _Problem):
    """The reference's coupled primal/dual lr schedule, driven by the last strict violation."""
    factor = [1.0]

    def primal(_):
        violation = problem.last_strict
        if violation > 0.05:
            factor[0] /= 1.1
        elif violation < 0.0:
            factor[0] *= 1.1
        factor[0] = min(max(factor[0], 1 / 20), 20)
        return factor[0]

    return (torch.optim.lr_scheduler.LambdaLR(primal_optimizer, primal),
            torch.optim.lr_scheduler.LambdaLR(dual_optimizer, lambda _: 1 / factor[0]))


def _torch_stepper(problem: _Problem, box: _Box, primal_lr: float, dual_lr: float,
                   penalty_coefficient: float) -> tuple[Callable[[], _State], list]:
    """The same updates as Cooper's AlternatingDualPrimalOptimizer + AugmentedLagrangian, written out."""
    multiplier = torch.zeros(1, requires_grad=True)
    rho = [float(penalty_coefficient)]
    primal = torch.optim.Adam([*box.lo, *box.hi], lr=primal_lr / box.n_params)
    dual = torch.optim.SGD([multiplier], lr=dual_lr, maximize=True)

    def step() -> _State:
        primal.zero_grad()
        dual.zero_grad()
        state = problem.state()
        # penalty update on the strict violation (multiplicative growth, restart when feasible), clamp
        strict = max(float(state.strict_violation), 0.0)
        if strict > 0.05:
            rho[0] *= 1.01
        if strict == 0.0:
            rho[0] = float(penalty_coefficient)
        rho[0] = min(rho[0], 1e3)
        # dual ascent on lambda * strict_violation, projected onto lambda >= 0
        (multiplier * state.strict_violation.detach()).sum().backward()
        dual.step()
        with torch.no_grad():
            multiplier.clamp_(min=0)
        # primal descent on the inequality augmented Lagrangian at the new multiplier
        lam = multiplier.detach()
        augmented = (torch.relu(lam + rho[0] * state.violation) ** 2 - lam ** 2).sum() / (2 * rho[0])
        (state.loss + augmented).backward()
        primal.step()
        return state

    return step, [primal, dual]


def solve_reference(params: dict, x: np.ndarray, y: np.ndarray, tau: float, steps: int, seed: int = 0, *,
                    batch_size: int = 500, certificate_samples: int = 1000, primal_learning_rate: float = 0.1,
                    dual_learning_rate: float = 0.1, penalty_coefficient: float = 1.0, use_schedule: bool = True,
                    init_bbox: float = 0.0, obj_alpha: float = 0.0, warmup: int = 5, validate: bool = True,
                    loader: str = "dataloader") -> ReferenceResult:
    """The reference's box ("Rashomon set") around an MLP's params certifying accuracy >= tau on (x, y).

    params: ``{"dense_i": {"kernel": [in, out], "bias": [out]}}`` (float32); x [n, in]; y [n] int labels.
    Keyword arguments default to the reference's defaults."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    x_all = torch.tensor(np.array(x, np.float32)).reshape(len(x), -1)
    y_all = torch.tensor(np.array(y, np.int64))
    box = _Box(params, init_bbox)
    n_classes = box.nominal[-1].shape[0]
    onehot_all = torch.nn.functional.one_hot(y_all, n_classes).float()

    def finish(ran: int, seconds: float, temperature: float, surrogate: float,
               mean_seconds: float = float("nan")) -> ReferenceResult:
        lo, hi = box.export()
        margins = interval_margin_lower(params, lo, hi, x_all.numpy(), y_all.numpy())
        return ReferenceResult(lo, hi, seconds, float((margins > 0).mean()), ran, temperature, surrogate,
                               mean_seconds)

    if tau <= 0.0:  # the reference returns the whole projection box
        with torch.no_grad():
            for l, p, u in zip(box.lo, box.nominal, box.hi):
                l.copy_(p - MAX_PARAMETER_WIDTH)
                u.copy_(p + MAX_PARAMETER_WIDTH)
        return finish(0, float("nan"), float("nan"), float("nan"))

    box.project()
    cert_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_all, onehot_all),
                                              batch_size=certificate_samples, shuffle=True,
                                              generator=torch.Generator().manual_seed(seed))
    x_cert, onehot_cert = next(iter(cert_loader))

    with torch.no_grad():
        logits_l, logits_u = _logit_bounds(*box.layers(), x_cert)
        if _order_statistic(_hard_certified(logits_l, logits_u, onehot_cert), tau) <= 0:
            LOGGER.warning("nominal model misses tau=%s on the certificate batch; no box computed", tau)
            return finish(0, float("nan"), float("nan"), float("nan"))
        temperature = None
        candidates, t = [], TEMPERATURE_START
        while t < TEMPERATURE_CAP:
            candidates.append(t)
            t *= 2.0
        for t in candidates + [TEMPERATURE_CAP]:
            if _order_statistic(_soft_margin(logits_l, logits_u, onehot_cert, t), tau) > 0:
                temperature = t
                break
        if temperature is None:
            raise ValueError(f"no softmax temperature in [{TEMPERATURE_START}, {TEMPERATURE_CAP}] clears tau={tau}")

    batches = _Batches(x_all, onehot_all, batch_size, seed, loader)
    problem = _Problem(box, batches, tau, temperature, obj_alpha, validate)
    step, (primal, dual) = _torch_stepper(problem, box, primal_learning_rate, dual_learning_rate,
                                          penalty_coefficient)
    schedules = _schedules(primal, dual, problem)

    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state = step()
        if use_schedule:
            for schedule in schedules:
                schedule.step()
        box.project()
        state.loss.item()  # the reference logs the loss and the box size every step
        box.width()
        times.append(time.perf_counter() - start)
    timed = times[warmup:] if len(times) > warmup else times
    seconds = float(np.median(timed)) if timed else float("nan")
    mean_seconds = float(np.mean(timed)) if timed else float("nan")

    with torch.no_grad():
        logits_l, logits_u = _logit_bounds(*box.layers(), x_cert)
        surrogate = float(_order_statistic(_soft_margin(logits_l, logits_u, onehot_cert, temperature), tau))
    return finish(steps, seconds, temperature, surrogate, mean_seconds)


__all__ = ["MAX_PARAMETER_WIDTH", "ReferenceResult", "interval_margin_lower", "solve_reference"]
