"""Experiment family: certified fine-tuning of a frozen feature extractor's head on a shifted task.

Per seed: a digits CNN (cnn:16,16) is pretrained on the original task A and frozen; an MLP head
(16 -> 32 -> 10) is trained on its pooled features. Task B is task A shifted (``shift``: the digits
mirrored left to right, with pixel noise, blurred, or at lower contrast). For each ``delta`` the
head gets a box LID with the **distribution guarantee** for task A (:func:`certify.lid.for_network`
on the head's features: half of the digits test split certifies, the other half is held out; with
95% confidence task A's certified accuracy on new digits is >= tau = min(max(acc - delta, acc / 2),
tau_max)), shaped by bias weights along task B's gradient on a 64-sample lookahead buffer; the head
is then fine-tuned on task B by projected Adam. Unconstrained fine-tuning of the same head is the
comparison. After every epoch the run checks that the head lies inside the LID, so task A's
guarantee holds throughout.

With ``recentre`` R > 1 the head walks through a **chain of certified boxes** instead (see
:func:`chain_box`): at R evenly spaced steps a new box is solved around the current head on the
certification rows alone (half shapes it, half scales it), and kept only if its held-out
Clopper-Pearson bound at confidence
``1 - 0.05 / R`` is >= tau; at the first box that fails, the chain stops and training stays in the
last box that passed. No held-out row shapes any box, and the boxes tried are a prefix of a chain
fixed before the held-out rows are looked at, so by the union bound every kept box's bound holds
with 95% confidence together. Table: ``metrics.csv`` (one row per seed and delta); figure:
``curves.png``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from certify import certificates, guarantee, lid
from certify.continual import safe
from certify.solver import LIDConfig
from metaedit import datasets, nets, report, requirements
from metaedit.options import option

TABLES = ("metrics.csv",)
SHIFTS = ("mirror", "noise", "blur", "contrast")


@dataclasses.dataclass(frozen=True)
class Config:
    """The fine-tuning experiment."""

    seeds: int = option(5, "seeds")
    shift: str = option("mirror", "task B: task A's digits mirrored, with noise, blurred, or at lower contrast",
                        choices=SHIFTS)
    epochs: int = option(10, "epochs of fine-tuning on task B")
    steps_per_epoch: int = option(100, "Adam steps per epoch")
    deltas: tuple[float, ...] = option((0.1,), "tau = min(max(acc - delta, acc / 2), tau_max) for task A, each")
    tau_max: float = option(0.9, "the largest tau for task A")
    bound: str = option("interval", "the LID's bounds", choices=("interval", "linear"))
    max_log_radius: float = option(0.0, "cap on the LID's log half-widths (the solver's max_log_radius)")
    bias: str = option("update", "LID bias weights: none, or room along task B's gradient on a lookahead buffer",
                       choices=("none", "update"))
    recentre: int = option(1, "box LIDs over the fine-tuning: 1, the one distribution-guaranteed LID; R > 1, a chain of "
                              "R boxes re-solved around the head at evenly spaced steps, each checked on the held-out "
                              "rows at confidence 1 - 0.05 / R")
    chain_scale_confidence: float = option(0.95, "a chain's boxes: the confidence of the scale test on the second half of "
                                                 "the certification rows (it sizes the box; the held-out check decides)")
    out: str = option("results/finetune", "output folder")

    def __post_init__(self):
        if not 1 <= self.recentre <= self.epochs * self.steps_per_epoch:
            raise ValueError(f"recentre must lie in [1, epochs x steps_per_epoch = {self.epochs * self.steps_per_epoch}], "
                             f"got {self.recentre}")
        if not 0 < self.chain_scale_confidence < 1:
            raise ValueError(f"chain_scale_confidence must lie in (0, 1), got {self.chain_scale_confidence}")


def shifted(x: jax.Array, shift: str, key: jax.Array) -> jax.Array:
    """Task B's images from task A's, x [n, height, width, 1] with pixels in [0, 1]."""
    if shift == "mirror":
        return x[:, :, ::-1]
    if shift == "noise":
        return jnp.clip(x + 0.35 * jax.random.normal(key, x.shape), 0.0, 1.0)
    if shift == "blur":
        kernel = jnp.ones((3, 3, 1, 1), x.dtype) / 9
        return nets.conv(x, kernel)
    if shift == "contrast":
        return 0.35 * x + 0.65 * x.mean(axis=(1, 2, 3), keepdims=True)
    raise ValueError(f"shift must be one of {SHIFTS}, got {shift!r}")


def chain_starts(total: int, links: int) -> list[int]:
    """The steps, of ``total``, at which a chain of ``links`` boxes places each box: evenly spaced
    from step 0 (fewer when ``links > total``)."""
    return sorted({k * total // links for k in range(links)})


def epoch_parts(epoch: int, steps: int, starts: Sequence[int]) -> list[tuple[int, int]]:
    """The step ranges [a, b) of epoch ``epoch`` (``steps`` steps each), split where a box of the chain
    starts (``starts``, from :func:`chain_starts`)."""
    first, last = epoch * steps, (epoch + 1) * steps
    bounds = sorted({first, *(c for c in starts if first <= c < last), last})
    return list(zip(bounds[:-1], bounds[1:]))


def _accuracy(spec, params, x, y) -> float:
    return float(requirements.accuracy(spec, params, x, y))


def chain_box(spec, params, features: datasets.Dataset, rows, tau: float, links: int, solver: LIDConfig,
              bias=None, seed: int = 0, scale_confidence: float = 0.95):
    """One link of a certified chain: a box LID around ``params`` shaped on the certification rows
    ``rows[0]`` alone, then checked on the held-out rows ``rows[1]`` at confidence ``1 - 0.05 / links``.

    The certification rows are split in two: the first half shapes the box, the second half scales
    it (:func:`certify.lid.for_network`'s held-out scale test, at ``scale_confidence``) until its certified rate there
    is likely to reach the rate the check needs on ``rows[1]``. Without that split the box fits the
    rows it was solved on (on digits: 0.73 of them certified, 0.60 of new rows). Returns (the box,
    or None when none is found or the check fails, and the check's certificate or None)."""
    confidence = 1 - 0.05 / links
    cert_rows, heldout_rows = rows
    half = len(cert_rows) // 2
    x, y = jnp.asarray(features.x_test[cert_rows]), jnp.asarray(features.y_test[cert_rows])
    hx, hy = jnp.asarray(features.x_test[heldout_rows]), jnp.asarray(features.y_test[heldout_rows])
    needed = guarantee.needed_rate(tau, len(heldout_rows), confidence)
    if needed > 1:
        return None, None
    try:
        found = lid.for_network(spec, params, features, needed, solver, seed=seed, confidence=scale_confidence,
                                rows=(cert_rows[:half], cert_rows[half:]), bias=bias)
    except lid.LIDError:
        return None, None
    check = certificates.certificate(spec, found.best.domain, certificates.Constraint(x, y, tau), hx, hy, confidence,
                                     solver.margin_tol, solver.bound)
    return (found.best.domain if check.lower_bound >= tau else None), check


def one_seed(config: Config, seed: int) -> list[dict]:
    """One pretrained extractor and head; per delta, its task-A LID and safe fine-tuning; and
    unconstrained fine-tuning."""
    data = datasets.load_dataset("digits")
    cnn = nets.CNNSpec(data.input_shape, (16, 16), data.num_classes)
    key = jax.random.key(seed)
    xa, ya = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    xa_test, ya_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    xb, xb_test = (shifted(x, config.shift, jax.random.fold_in(key, 20 + i)) for i, x in enumerate((xa, xa_test)))
    extractor = safe.projected_steps_jit(cnn, nets.init(cnn, jax.random.fold_in(key, 0)), None, xa, ya, 1500, 3e-3,
                                         64, jax.random.fold_in(key, 1))
    feat = jax.jit(lambda x: nets.features(cnn, extractor, x))
    fa, fa_test, fb, fb_test = feat(xa), feat(xa_test), feat(xb), feat(xb_test)
    head_spec = nets.MLPSpec((fa.shape[1],), (32,), data.num_classes)
    head = safe.projected_steps_jit(head_spec, nets.init(head_spec, jax.random.fold_in(key, 2)), None, fa, ya, 1500,
                                    3e-3, 64, jax.random.fold_in(key, 3))
    features = datasets.Dataset("digits-features", np.asarray(fa), np.asarray(ya), np.asarray(fa_test),
                                np.asarray(ya_test), data.num_classes)
    cert, heldout = lid.default_sample_counts(len(ya_test))
    cert_rows, _ = lid.certification_rows(len(ya_test), cert, heldout, seed)
    point = certificates.point_certified_accuracy(head_spec, head, fa_test[cert_rows], ya_test[cert_rows])
    rng = np.random.default_rng(seed)
    weights = None
    buffer = rng.permutation(len(ya))[:64]  # a 64-sample lookahead buffer of task B
    if config.bias == "update":  # room along task B's gradient
        weights = safe.update_bias(head_spec, head, fb[buffer], ya[buffer])

    def fine_tune(domain, starts=(), link=None):
        """The per-epoch curve of fine-tuning the head on task B inside ``domain`` (None: unconstrained).
        With a chain, ``link(params)`` is called at each step of ``starts`` while no link has failed
        and returns the next box (None: it failed); None when the first link fails."""
        steps, links = config.steps_per_epoch, 0
        params, curve = head, []
        for epoch in range(config.epochs):
            parts = epoch_parts(epoch, steps, starts)
            for part, (a, b) in enumerate(parts):
                if a in starts and links == starts.index(a):
                    box = link(params)
                    if box is None and domain is None:
                        return None
                    if box is not None:
                        domain, links = box, links + 1
                part_key = jax.random.fold_in(key, 10 + epoch)
                part_key = part_key if len(parts) == 1 else jax.random.fold_in(part_key, part)
                params = safe.projected_steps_jit(head_spec, params, domain, fb, ya, b - a, 1e-3, 64, part_key)
            curve.append((_accuracy(head_spec, params, fb_test, ya_test),
                          _accuracy(head_spec, params, fa_test, ya_test),
                          domain is None or bool(domain.contains(params))))
        return curve

    def chained_fine_tune(tau, solver):
        """Fine-tuning through a chain of ``config.recentre`` checked boxes (:func:`chain_box`), the
        links evenly spaced over all the steps; the curve (None when the first box fails) and the
        held-out check of every box kept."""
        rows = lid.certification_rows(len(ya_test), cert, heldout, seed)
        total = config.epochs * config.steps_per_epoch
        checks = []

        def link(params):
            bias = safe.update_bias(head_spec, params, fb[buffer], ya[buffer]) if config.bias == "update" else None
            box, check = chain_box(head_spec, params, features, rows, tau, config.recentre, solver, bias, seed,
                                   config.chain_scale_confidence)
            if box is not None:
                checks.append(check)
            return box

        curve = fine_tune(None, chain_starts(total, config.recentre), link)
        return curve, checks

    free = fine_tune(None)
    before = {"task_a_before": _accuracy(head_spec, head, fa_test, ya_test),
              "task_b_before": _accuracy(head_spec, head, fb_test, ya_test)}
    records = []
    for delta in config.deltas:
        tau = safe.tau_rule(point, delta, config.tau_max)
        solver = LIDConfig(max_log_radius=config.max_log_radius, bound=config.bound)
        if config.recentre == 1:
            found = lid.for_network(head_spec, head, features, tau, solver, seed=seed, bias=weights)
            (certificate,) = found.best.certificates
            curve = fine_tune(found.best.domain)
            lower_bound, holds, scale, links = certificate.lower_bound, certificate.holds, found.scale_test.scale, 1
            certified = certificate.certified_accuracy
        else:
            curve, checks = chained_fine_tune(tau, solver)
            if curve is None:  # no certified box: the head cannot be fine-tuned safely, so it is left as it was
                print(f"seed {seed}, delta {delta}: no box of the chain passed its held-out check", flush=True)
                curve = [(before["task_b_before"], before["task_a_before"], False)] * config.epochs
            lower_bound = min((c.lower_bound for c in checks), default=None)
            holds = bool(checks) and all(c.lower_bound >= tau for c in checks)
            scale, links = None, len(checks)
            certified = min((c.certified_accuracy for c in checks), default=None)
        gain, free_gain = curve[-1][0] - before["task_b_before"], free[-1][0] - before["task_b_before"]
        records.append({"seed": seed, "shift": config.shift, "delta": delta, "tau": tau, **before,
                        "certified_a": certified, "lower_bound_a": lower_bound,
                        "guarantee_holds": holds, "scale": scale, "boxes": links,
                        "safe_task_b": curve[-1][0], "safe_task_a": curve[-1][1],
                        "unconstrained_task_b": free[-1][0], "unconstrained_task_a": free[-1][1],
                        "gain_ratio": gain / free_gain if free_gain > 0 else float("nan"),
                        "inside_throughout": all(c[2] for c in curve),
                        "curves": {"safe": curve, "unconstrained": free}})
    return records


def run(config: Config) -> dict[str, list[dict]]:
    records = []
    for seed in range(config.seeds):
        for r in one_seed(config, seed):
            records.append(r)
            bound = "none" if r["lower_bound_a"] is None else f"{r['lower_bound_a']:.3f}"
            print(f"seed {seed}, delta {r['delta']}: tau {r['tau']:.3f} (guarantee holds {r['guarantee_holds']}, bound "
                  f"{bound}); task B {r['task_b_before']:.3f} -> safe {r['safe_task_b']:.3f} / "
                  f"unconstrained {r['unconstrained_task_b']:.3f} (gain ratio {r['gain_ratio']:.2f}); task A safe "
                  f"{r['safe_task_a']:.3f} / unconstrained {r['unconstrained_task_a']:.3f}; inside "
                  f"{r['inside_throughout']}", flush=True)
    return {"metrics.csv": records}


def report_of(config: Config, tables: dict[str, list[dict]]) -> report.Report:
    records = tables["metrics.csv"]
    deltas = sorted({r["delta"] for r in records})

    def ms(key, rows):
        values = [r[key] for r in rows if r[key] is not None]
        return f"{np.mean(values):.3f} +- {np.std(values):.3f}" if values else "-"

    rows = []
    for delta in deltas:
        at = [r for r in records if r["delta"] == delta]
        rows.append({"delta": delta, "tau": ms("tau", at), "bound": ms("lower_bound_a", at),
                     "holds": f"{sum(bool(r['guarantee_holds']) for r in at)}/{len(at)}",
                     "inside": f"{sum(bool(r['inside_throughout']) for r in at)}/{len(at)}",
                     "b_before": ms("task_b_before", at), "b_safe": ms("safe_task_b", at),
                     "b_free": ms("unconstrained_task_b", at), "ratio": ms("gain_ratio", at),
                     "a_safe": ms("safe_task_a", at), "a_free": ms("unconstrained_task_a", at),
                     "boxes": f"{np.mean([r.get('boxes') or 1 for r in at]):.1f}"})
    columns = [report.column("delta", "delta"), report.column("tau (task A)", "tau"),
               report.column("held-out 95% bound, task A" if config.recentre == 1 else
                             f"smallest held-out bound at 1 - 0.05/{config.recentre}, task A", "bound"),
               report.column("guarantee holds", "holds"),
               report.column("inside after every epoch", "inside"), report.column("boxes kept", "boxes"),
               report.column("task B before", "b_before"),
               report.column("task B safe", "b_safe"), report.column("task B unconstrained", "b_free"),
               report.column("safe gain / unconstrained gain", "ratio"), report.column("task A safe", "a_safe"),
               report.column("task A unconstrained", "a_free")]
    panels = []
    for delta in deltas:
        at = [r for r in records if r["delta"] == delta]
        series = []
        for name, style in (("safe", "-"), ("unconstrained", "--")):
            for task, index in (("B", 0), ("A", 1)):
                values = np.mean([[c[index] for c in r["curves"][name]] for r in at], 0)
                series.append(report.Series(f"task {task}, {name}", list(range(1, len(values) + 1)), values, style))
        panels.append(report.Panel(f"delta {delta}", "epoch", "test accuracy", series,
                                   hlines=[(float(np.mean([r["tau"] for r in at])), "tau (task A)")]))
    return (report.Report(f"Certified fine-tuning of a frozen CNN's head (digits -> {config.shift} digits)")
            .paragraph(f"{len({r['seed'] for r in records})} seeds (mean +- std); {config.epochs} epochs of "
                       f"{config.steps_per_epoch} Adam steps on task B; tau_max {config.tau_max}; LID bias weights: "
                       f"{config.bias}. Task A's guarantee: with 95% confidence the head's certified accuracy on new "
                       "digits is >= tau for every head in its box LID (half of the digits test split certifies, "
                       "the other half is held out). The gain ratio is (task B after safe fine-tuning - before) / "
                       "(after unconstrained - before)."
                       + ("" if config.recentre == 1 else
                          f" Chain of up to {config.recentre} boxes: each solved around the head on the certification "
                          f"half alone and kept only when its held-out bound at confidence 1 - 0.05 / {config.recentre}"
                          " is >= tau (the chain stops at the first that fails); the bound column is the smallest kept"
                          " box's, and the kept boxes' bounds hold together with 95% confidence. A seed whose first box"
                       " fails has no certified fine-tuning: its head is left as it was (gain 0, guarantee not held)."
                       " Adam restarts at every box (each part of the steps is its own projected run)."))
            .table(rows, columns)
            .figure("curves.png", panels, 5, 3.6))
