"""Networks as data: frozen architecture specs, parameter pytrees, init, apply and validation.

A spec is a frozen (hashable) dataclass, static under ``jit``. Parameters are a plain pytree
``{layer_name: {"kernel": array, "bias": array}}``; layer names and shapes come from
:func:`layers`, the one description of an architecture that the rest of the project reads.

* :class:`MLPSpec`: dense layers with ReLU between them, inputs flattened.
  ``dense_i.kernel: [fan_in, fan_out]``.
* :class:`CNNSpec`: stride-1 convolutions with ReLU (1-D or 2-D, by the rank of ``input_shape``;
  ``same`` or ``valid`` padding per layer), then a linear read-out of the last feature map (global
  average pooling by default, or flattening, as in the safe-updates paper's Split MNIST CNN), one
  dense layer to the logits. ``conv_i.kernel: [*window, c_in, c_out]``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from metaedit.convolution import conv, output_spatial

Params = dict[str, dict[str, Any]]


class SpecError(ValueError):
    """An architecture spec, its parameters or its inputs are not consistent."""


@dataclasses.dataclass(frozen=True)
class MLPSpec:
    """A ReLU multilayer perceptron. input_shape: one example's shape (flattened by apply)."""

    input_shape: tuple[int, ...]
    hidden: tuple[int, ...]
    num_classes: int

    def __post_init__(self):
        _check_positive("input_shape", self.input_shape)
        _check_positive("hidden", self.hidden, allow_empty=True)
        _check_positive("num_classes", (self.num_classes,))

    @property
    def kind(self) -> str:
        return "mlp"


@dataclasses.dataclass(frozen=True)
class CNNSpec:
    """A small CNN. input_shape: ``(*spatial, channels)`` with 1 or 2 spatial axes.

    ``padding``: "same" or "valid" for every convolution, or a tuple with one per convolution.
    ``head``: how the dense layer reads the last feature map [*spatial, C]: "mean" (global average
    pooling: C inputs) or "flatten" (prod(spatial) * C inputs, row-major). Both are linear, so the
    bounds treat them exactly. The safe-updates paper's Split MNIST CNN is
    ``CNNSpec((28, 28, 1), (8, 1), 10, kernel_size=5, padding=("valid", "same"), head="flatten")``
    (6,179 parameters; :func:`paper_cnn`).
    """

    input_shape: tuple[int, ...]
    channels: tuple[int, ...]
    num_classes: int
    kernel_size: int = 3
    padding: str | tuple[str, ...] = "same"
    head: str = "mean"

    def __post_init__(self):
        _check_positive("input_shape", self.input_shape)
        if len(self.input_shape) not in (2, 3):
            raise SpecError(
                f"CNNSpec.input_shape must be (length, channels) or (height, width, channels), "
                f"got {self.input_shape}"
            )
        _check_positive("channels", self.channels)
        _check_positive("num_classes", (self.num_classes,))
        _check_positive("kernel_size", (self.kernel_size,))
        if any(p not in PADDINGS for p in self.paddings) or len(self.paddings) != len(self.channels):
            raise SpecError(f"CNNSpec.padding must be one of {PADDINGS} or a tuple of them, one per convolution "
                            f"({len(self.channels)}), got {self.padding!r}")
        if self.head not in HEADS:
            raise SpecError(f"CNNSpec.head must be one of {HEADS}, got {self.head!r}")
        if min(self.feature_shape[:-1], default=1) < 1:
            raise SpecError(f"CNNSpec: 'valid' convolutions of size {self.kernel_size} shrink the input "
                            f"{self.input_shape[:-1]} to nothing")

    @property
    def kind(self) -> str:
        return "cnn"

    @property
    def spatial_rank(self) -> int:
        return len(self.input_shape) - 1

    @property
    def paddings(self) -> tuple[str, ...]:
        """One padding ("same" or "valid") per convolution."""
        return (self.padding,) * len(self.channels) if isinstance(self.padding, str) else tuple(self.padding)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """The last feature map of one example, ``(*spatial, channels[-1])``."""
        spatial = tuple(self.input_shape[:-1])
        for padding in self.paddings:
            spatial = output_spatial(spatial, (self.kernel_size,) * len(spatial), padding)
        return spatial + (self.channels[-1],)

    @property
    def head_inputs(self) -> int:
        """Inputs of the dense head: channels[-1] (mean) or the flattened feature map (flatten)."""
        return self.channels[-1] if self.head == "mean" else int(np.prod(self.feature_shape))


PADDINGS = ("same", "valid")
HEADS = ("mean", "flatten")


def paper_cnn(input_shape: tuple[int, ...] = (28, 28, 1), num_classes: int = 10) -> CNNSpec:
    """The safe-updates paper's Split MNIST CNN: conv 1->8 5x5 valid, ReLU, conv 8->1 5x5 same, ReLU,
    flatten (576), dense -> 10 (6,179 parameters on 28 x 28 inputs)."""
    return CNNSpec(tuple(input_shape), (8, 1), num_classes, kernel_size=5, padding=("valid", "same"), head="flatten")


Spec = Union[MLPSpec, CNNSpec]


def _check_positive(name: str, values: tuple, allow_empty: bool = False) -> None:
    values = tuple(values)
    if (not values and not allow_empty) or any(
        not isinstance(v, (int, np.integer)) or v <= 0 for v in values
    ):
        raise SpecError(f"{name} must be a tuple of positive integers, got {values}")


class Layer(NamedTuple):
    """One parameterised layer: ``kind`` is "dense" or "conv"; shapes exclude any population axis;
    ``padding`` ("SAME" or "VALID") is a convolution's."""

    name: str
    kind: str
    kernel_shape: tuple[int, ...]
    bias_shape: tuple[int, ...]
    padding: str = "SAME"

    @property
    def fan_in(self) -> int:
        return int(np.prod(self.kernel_shape[:-1]))


def layers(spec: Spec) -> tuple[Layer, ...]:
    """The parameterised layers of ``spec``, input to output."""
    if isinstance(spec, MLPSpec):
        widths = (int(np.prod(spec.input_shape)),) + tuple(spec.hidden) + (spec.num_classes,)
        return tuple(
            Layer(f"dense_{i}", "dense", (widths[i], widths[i + 1]), (widths[i + 1],))
            for i in range(len(widths) - 1)
        )
    if isinstance(spec, CNNSpec):
        window = (spec.kernel_size,) * spec.spatial_rank
        chans = (spec.input_shape[-1],) + tuple(spec.channels)
        convs = tuple(
            Layer(f"conv_{i}", "conv", window + (chans[i], chans[i + 1]), (chans[i + 1],), spec.paddings[i].upper())
            for i in range(len(spec.channels))
        )
        head = Layer("dense_0", "dense", (spec.head_inputs, spec.num_classes), (spec.num_classes,))
        return convs + (head,)
    raise SpecError(f"not an architecture spec: {spec!r}")


def param_shapes(spec: Spec) -> dict[str, dict[str, tuple[int, ...]]]:
    """``{layer: {"kernel": shape, "bias": shape}}`` for one network."""
    return {l.name: {"kernel": l.kernel_shape, "bias": l.bias_shape} for l in layers(spec)}


def num_params(spec: Spec) -> int:
    """Number of scalar parameters of one network."""
    return sum(math.prod(l.kernel_shape) + math.prod(l.bias_shape) for l in layers(spec))


def population_size(params: Params) -> int:
    """P, the number of networks in stacked params [P, ...]."""
    return int(np.shape(jax.tree.leaves(params)[0])[0])


def widest_activation(spec: Spec) -> int:
    """Floats in the widest activation of one example (an input or a hidden layer)."""
    if isinstance(spec, MLPSpec):
        return max((int(np.prod(spec.input_shape)),) + tuple(spec.hidden))
    return max(int(np.prod(spec.input_shape)), int(np.prod(spec.input_shape[:-1])) * max(spec.channels))


@functools.partial(jax.jit, static_argnums=0)
def init(spec: Spec, key: jax.Array, scale: float | jax.Array = 1.0) -> Params:
    """Random parameters: kernels ~ N(0, 2 / fan_in) * scale (He init; the last layer 1 / fan_in).

    Biases start at 0. ``scale`` may be traced (a per-member hyperparameter under vmap). Jitted.
    """
    all_layers = layers(spec)
    keys = jax.random.split(key, len(all_layers))
    params = {}
    for i, (layer, k) in enumerate(zip(all_layers, keys)):
        gain = 1.0 if i == len(all_layers) - 1 else 2.0
        std = math.sqrt(gain / layer.fan_in)
        params[layer.name] = {
            "kernel": jax.random.normal(k, layer.kernel_shape, jnp.float32) * (std * scale),
            "bias": jnp.zeros(layer.bias_shape, jnp.float32),
        }
    return params


def apply(spec: Spec, params: Params, x: jax.Array, convolve=conv) -> jax.Array:
    """Logits [B, num_classes] for inputs x [B, *spec.input_shape]; a CNN's convolutions by ``convolve``
    (default :func:`metaedit.convolution.conv`; a benchmark compares others)."""
    if tuple(x.shape[1:]) != tuple(spec.input_shape):
        raise SpecError(
            f"inputs have shape {tuple(x.shape)}; the network takes [batch, *{tuple(spec.input_shape)}]"
        )
    all_layers = layers(spec)
    if isinstance(spec, MLPSpec):
        return mlp_forward(spec, params, x)[1]
    head = params[all_layers[-1].name]
    return features(spec, params, x, convolve) @ head["kernel"] + head["bias"]


def mlp_forward(spec: "MLPSpec", params: Params, h: jax.Array, start: int = 0) -> tuple[list[jax.Array], jax.Array]:
    """``(hidden, logits)`` of an MLP from ``h`` [n, width], the input of layer ``start`` (0: the
    network's input, flattened here): the activations [n, width] of every hidden layer from ``start``
    on, and the logits [n, C]."""
    h, hidden = h.reshape(h.shape[0], -1), []
    all_layers = layers(spec)
    for layer in all_layers[start:-1]:
        h = jax.nn.relu(h @ params[layer.name]["kernel"] + params[layer.name]["bias"])
        hidden.append(h)
    last = all_layers[-1].name
    return hidden, h @ params[last]["kernel"] + params[last]["bias"]


def head_input(spec: "CNNSpec", h: jax.Array, trailing: int = 0) -> jax.Array:
    """What a CNN's dense head reads from its last feature map h [B, *spatial, C, *extra] (``trailing``
    extra axes, e.g. an affine form's symbols): [B, C, *extra] (mean) or [B, prod(spatial) * C, *extra]
    (flatten). Linear."""
    if spec.head == "mean":
        return h.mean(axis=tuple(range(1, 1 + spec.spatial_rank)))
    features = h.shape[1:h.ndim - trailing]
    return h.reshape(h.shape[:1] + (math.prod(features),) + h.shape[1 + len(features):])


def head_input_transpose(spec: "CNNSpec", coef: jax.Array) -> jax.Array:
    """The transpose of :func:`head_input` on coefficients [B, S, F] -> [B, S, *feature_shape]."""
    shape = coef.shape[:2] + tuple(spec.feature_shape)
    if spec.head == "mean":
        cells = int(np.prod(spec.feature_shape[:-1]))
        expanded = coef.reshape(coef.shape[:2] + (1,) * spec.spatial_rank + coef.shape[-1:])
        return jnp.broadcast_to(expanded, shape) / cells
    return coef.reshape(shape)


def rescale(spec: Spec, params: Params, key: jax.Array, spread: float | jax.Array) -> Params:
    """The same function with other weights: every hidden neuron (channel) ``j`` of layer ``l`` gets
    its incoming kernel and bias multiplied by ``c_j`` and its outgoing kernel by ``1 / c_j``, with
    ``c_j`` log-uniform in ``[1 / spread, spread]``. ReLU is positively homogeneous (and a CNN's
    global mean pool linear), so the logits are unchanged up to rounding. One network; vmap it."""
    all_layers = layers(spec)
    out = {layer.name: dict(params[layer.name]) for layer in all_layers}
    keys = jax.random.split(key, len(all_layers) - 1)
    log_spread = jnp.log(jnp.asarray(spread, jnp.float32))
    for layer, following, k in zip(all_layers[:-1], all_layers[1:], keys):
        c = jnp.exp(jax.random.uniform(k, layer.bias_shape, jnp.float32, -log_spread, log_spread))
        out[layer.name]["kernel"] = out[layer.name]["kernel"] * c
        out[layer.name]["bias"] = out[layer.name]["bias"] * c
        if following.kernel_shape[-2] != c.shape[0]:  # a flatten head: every position of the channel
            c = jnp.tile(c, following.kernel_shape[-2] // c.shape[0])
        out[following.name]["kernel"] = out[following.name]["kernel"] / c[:, None]
    return out


def features(spec: "CNNSpec", params: Params, x: jax.Array, convolve=conv) -> jax.Array:
    """A CNN's features [B, spec.head_inputs] (pooled or flattened): what its linear head reads."""
    if not isinstance(spec, CNNSpec):
        raise SpecError(f"features are defined for CNNs; got {describe(spec)}")
    h = x
    for layer in layers(spec)[:-1]:
        h = jax.nn.relu(linear_map(layer, convolve)(h, params[layer.name]["kernel"]) + params[layer.name]["bias"])
    return head_input(spec, h)


def linear_map(layer: Layer, convolve=conv):
    """The layer's linear map ``(h, kernel) -> h * kernel``: a matrix product (dense) or ``convolve``
    (default :func:`conv`) with the layer's padding."""
    if layer.kind == "dense":
        return lambda h, kernel: h @ kernel
    return functools.partial(convolve, padding=layer.padding)


def check_fits(spec: Spec, input_shape: tuple[int, ...], outputs: int, where: str,
               error: type[Exception] = SpecError) -> None:
    """Raises ``error`` unless ``spec`` takes inputs of ``input_shape`` and has ``outputs`` outputs;
    ``where`` names the data in the message (e.g. "data set adult")."""
    if tuple(spec.input_shape) != tuple(input_shape):
        raise error(f"architecture {describe(spec)} takes inputs {tuple(spec.input_shape)}; {where} has "
                    f"{tuple(input_shape)}")
    if spec.num_classes != outputs:
        raise error(f"the network has {spec.num_classes} outputs; {where} needs {outputs}")


def check_shapes(spec: Spec, params: Any, batch_dims: int = 0) -> None:
    """Raises :class:`SpecError` naming the first leaf whose structure, shape or dtype does not fit.

    Checks the layer names, that every layer has exactly "kernel" and "bias", each leaf's shape
    after ``batch_dims`` leading population axes (which must agree across leaves), and that it is
    floating point. Reads shapes only, so it also works on tracers under ``jit``.
    """
    expected = param_shapes(spec)
    if not isinstance(params, dict):
        raise SpecError(f"params must be a dict of layers, got {type(params).__name__}")
    missing = sorted(set(expected) - set(params))
    extra = sorted(set(params) - set(expected))
    if missing or extra:
        raise SpecError(
            f"params do not match {describe(spec)}: missing layers {missing}, unexpected layers {extra}"
        )
    lead = None
    for name, shapes in expected.items():
        layer = params[name]
        if not isinstance(layer, dict) or set(layer) != {"kernel", "bias"}:
            got = sorted(layer) if isinstance(layer, dict) else type(layer).__name__
            raise SpecError(f"params[{name!r}] must hold exactly 'kernel' and 'bias', got {got}")
        for leaf_name, shape in shapes.items():
            path = f"{name}/{leaf_name}"
            leaf = layer[leaf_name]
            if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
                raise SpecError(f"{path} is not an array ({type(leaf).__name__})")
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise SpecError(f"{path} has dtype {leaf.dtype}; parameters must be floating point")
            if len(leaf.shape) != batch_dims + len(shape) or tuple(leaf.shape[batch_dims:]) != shape:
                want = ("P, " * batch_dims) + ", ".join(map(str, shape))
                raise SpecError(
                    f"{path} has shape {tuple(leaf.shape)}; {describe(spec)} needs [{want}]"
                )
            this_lead = tuple(leaf.shape[:batch_dims])
            if lead is not None and this_lead != lead:
                raise SpecError(f"{path} has population axes {this_lead}, other leaves have {lead}")
            lead = this_lead


def validate_params(spec: Spec, params: Any, batch_dims: int = 0) -> None:
    """:func:`check_shapes`, then that every value is finite (concrete arrays only, not under jit).

    Raises :class:`SpecError` naming the first offending leaf and, for NaN/Inf, the first index.
    """
    check_shapes(spec, params, batch_dims)
    for name, shapes in param_shapes(spec).items():
        for leaf_name in shapes:
            finite = np.isfinite(np.asarray(params[name][leaf_name]))
            if not finite.all():
                bad = np.argwhere(~finite)[0]
                raise SpecError(
                    f"{name}/{leaf_name} holds NaN or Inf (first at index {tuple(int(i) for i in bad)})"
                )


def describe(spec: Spec) -> str:
    """A short architecture string: ``mlp:32,32``, ``cnn:8,16``, or with a CNN's non-default options
    ``cnn:8,1/k5/valid,same/flatten`` (see :func:`parse_arch`)."""
    widths = spec.hidden if isinstance(spec, MLPSpec) else spec.channels
    text = f"{spec.kind}:{','.join(map(str, widths))}"
    if isinstance(spec, CNNSpec):
        if spec.kernel_size != 3:
            text += f"/k{spec.kernel_size}"
        if set(spec.paddings) != {"same"}:
            text += "/" + ",".join(spec.paddings)
        if spec.head != "mean":
            text += f"/{spec.head}"
    return text


def parse_arch(text: str, input_shape: tuple[int, ...], num_classes: int) -> Spec:
    """Builds a spec from ``mlp:W1,W2,...`` or ``cnn:C1,C2,...[/kK][/P1,P2,...][/flatten]`` (kernel
    size K, a padding "same" or "valid" per convolution or one for all, the head "mean" or "flatten")
    for the given data shape."""
    kind, _, rest = text.partition(":")
    widths_text, *options = rest.split("/")
    try:
        widths = tuple(int(w) for w in widths_text.split(",") if w.strip())
    except ValueError:
        raise SpecError(f"bad architecture {text!r}: widths must be integers, as in mlp:32,32") from None
    if kind == "mlp" and not options:
        return MLPSpec(tuple(input_shape), widths, num_classes)
    if kind == "cnn":
        if len(input_shape) not in (2, 3):
            raise SpecError(
                f"architecture {text!r} needs image-like inputs (length, channels) or "
                f"(height, width, channels); this data set has input shape {tuple(input_shape)}"
            )
        settings: dict[str, Any] = {}
        for option in options:
            if option in HEADS:
                settings["head"] = option
            elif option[:1] == "k" and option[1:].isdigit():
                settings["kernel_size"] = int(option[1:])
            elif option and set(option.split(",")) <= set(PADDINGS):
                paddings = tuple(option.split(","))
                settings["padding"] = paddings[0] if len(paddings) == 1 else paddings
            else:
                raise SpecError(f"bad CNN option {option!r} in {text!r}; use kK (kernel size), "
                                f"{'/'.join(PADDINGS)} (one per convolution, comma-separated) or {'/'.join(HEADS)}")
        return CNNSpec(tuple(input_shape), widths, num_classes, **settings)
    raise SpecError(f"unknown architecture kind {kind!r} in {text!r}; use mlp:W,... or cnn:C,...[/k5/valid,same/flatten]")


def spec_to_dict(spec: Spec) -> dict:
    """A JSON-ready record of ``spec`` (inverse: :func:`spec_from_dict`)."""
    return {"kind": spec.kind, **{k: _listify(v) for k, v in dataclasses.asdict(spec).items()}}


def spec_from_dict(record: dict) -> Spec:
    """The spec that :func:`spec_to_dict` recorded."""
    record = dict(record)
    kind = record.pop("kind", None)
    cls = {"mlp": MLPSpec, "cnn": CNNSpec}.get(kind)
    if cls is None:
        raise SpecError(f"unknown architecture kind {kind!r} in record {record}")
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k in fields})


def _listify(value):
    return list(value) if isinstance(value, tuple) else value


def save_params(path, spec: Spec, params: Params) -> None:
    """Writes one network to ``path`` (.npz): its leaves as ``layer/leaf`` arrays and its spec as JSON."""
    import json

    from pathlib import Path

    validate_params(spec, params)
    arrays = {f"{name}/{leaf}": np.asarray(value) for name, layer in params.items() for leaf, value in layer.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        np.savez(handle, __spec__=np.array(json.dumps(spec_to_dict(spec))), **arrays)


def load_params(path) -> tuple[Spec, Params]:
    """Reads a network written by :func:`save_params`; a damaged or foreign file is a :class:`SpecError`."""
    import json
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as stored:
            spec = spec_from_dict(json.loads(str(stored["__spec__"])))
            params: dict = {}
            for key in stored.files:
                if key == "__spec__":
                    continue
                name, _, leaf = key.partition("/")
                params.setdefault(name, {})[leaf] = stored[key]
    except FileNotFoundError:
        raise SpecError(f"params file not found: {path}") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as error:
        raise SpecError(f"{path} is not a readable metaedit params file ({type(error).__name__}: {error})") from None
    validate_params(spec, params)
    return spec, params
