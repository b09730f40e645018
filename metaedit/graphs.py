"""Networks as graphs: ``params -> jraph.GraphsTuple -> params``, exact in both directions.

One node per neuron (input features / input channels, hidden neurons / channels, outputs), one
edge per weight, directed from layer l to layer l + 1. A dense weight is a 1-vector on its edge; a
conv kernel ``[*window, c_in, c_out]`` gives one edge per (c_in, c_out) pair carrying the ``K =
prod(window)`` taps as a vector. Edge features are zero-padded to ``edge_dim`` (the widest edge).

Node features (``graph.nodes``, a dict):
  ``bias [N, 1]``: the neuron's bias (0 on inputs); ``kind [N]``: 0 input, 1 hidden, 2 output;
  ``index [N]``: the input feature's or output class's own number, and for a hidden neuron the
  number of its layer (1, 2, ...), so hidden neurons of one layer share a code (their permutations
  are a symmetry) while every input and every output keeps its identity.
Edge features (``graph.edges``, a dict): ``weight [E, edge_dim]``, ``layer [E]`` (parameter layer).

For a zoo, the topology is built once per spec (:func:`topology`, cached) and stacked parameters
``[P, ...]`` give stacked features ``bias [P, N, 1]``, ``weight [P, E, edge_dim]`` with unbatched
``senders``/``receivers``. Zoos of several architectures go into one padded ``GraphsTuple``
(:func:`batch_graphs`), undone exactly by :func:`unbatch_graphs`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax.numpy as jnp
import jraph
import numpy as np

from metaedit import nets

INPUT, HIDDEN, OUTPUT = 0, 1, 2


@dataclasses.dataclass(frozen=True, eq=False)
class Topology:
    """The static graph of one architecture (numpy, read-only).

    senders, receivers, edge_layer: [E] int32.  node_kind, node_index, node_layer: [N] int32.
    edge_slices[l] / node_slices[l]: the edges of parameter layer l and the nodes holding its bias.
    taps[l]: the number of weights on one edge of layer l (1 for dense, prod(window) for conv).
    """

    senders: np.ndarray
    receivers: np.ndarray
    edge_layer: np.ndarray
    node_kind: np.ndarray
    node_index: np.ndarray
    node_layer: np.ndarray
    edge_slices: tuple[tuple[int, int], ...]
    node_slices: tuple[tuple[int, int], ...]
    taps: tuple[int, ...]

    @property
    def num_nodes(self) -> int:
        return len(self.node_kind)

    @property
    def num_edges(self) -> int:
        return len(self.senders)

    @property
    def edge_dim(self) -> int:
        return max(self.taps)


def _frozen(array) -> np.ndarray:
    array = np.asarray(array, np.int32)
    array.flags.writeable = False
    return array


@functools.lru_cache(maxsize=64)
def topology(spec: nets.Spec) -> Topology:
    """The graph of ``spec``: neurons in layer order (inputs first), edges in parameter order.

    A CNN's head must read its pooled channels (``head="mean"``): a flattened map has no node per
    channel for the head's edges to leave from."""
    if isinstance(spec, nets.CNNSpec) and spec.head != "mean":
        raise nets.SpecError(f"the metanetwork reads CNNs whose head pools the channels (head 'mean'); "
                             f"{nets.describe(spec)} flattens its feature map")
    all_layers = nets.layers(spec)
    widths = [all_layers[0].kernel_shape[-2]] + [l.kernel_shape[-1] for l in all_layers]
    offsets = np.concatenate([[0], np.cumsum(widths)])
    depth = len(widths) - 1
    kinds, indices, node_layer = [], [], []
    for position, width in enumerate(widths):
        kind = INPUT if position == 0 else OUTPUT if position == depth else HIDDEN
        kinds.append(np.full(width, kind))
        indices.append(np.arange(width) if kind != HIDDEN else np.full(width, position))
        node_layer.append(np.full(width, position))
    senders, receivers, edge_layer, edge_slices, node_slices, taps = [], [], [], [], [], []
    start = 0
    for l, layer in enumerate(all_layers):
        fan_in, fan_out = widths[l], widths[l + 1]
        src = offsets[l] + np.repeat(np.arange(fan_in), fan_out)  # edge order: (i, j), i-major
        dst = offsets[l + 1] + np.tile(np.arange(fan_out), fan_in)
        senders.append(src)
        receivers.append(dst)
        edge_layer.append(np.full(len(src), l))
        edge_slices.append((start, start + len(src)))
        node_slices.append((int(offsets[l + 1]), int(offsets[l + 2])))
        taps.append(int(np.prod(layer.kernel_shape[:-2])) if layer.kind == "conv" else 1)
        start += len(src)
    return Topology(
        senders=_frozen(np.concatenate(senders)), receivers=_frozen(np.concatenate(receivers)),
        edge_layer=_frozen(np.concatenate(edge_layer)), node_kind=_frozen(np.concatenate(kinds)),
        node_index=_frozen(np.concatenate(indices)), node_layer=_frozen(np.concatenate(node_layer)),
        edge_slices=tuple(edge_slices), node_slices=tuple(node_slices), taps=tuple(taps),
    )


def lead_shape(spec: nets.Spec, params: nets.Params) -> tuple[int, ...]:
    """Population axes of ``params`` (``()`` for one network, ``(P,)`` for a stacked zoo), after
    checking that every leaf fits ``spec`` (:func:`metaedit.nets.check_shapes`)."""
    first = nets.layers(spec)[0]
    kernel = params[first.name]["kernel"] if first.name in params else None
    lead = 0 if kernel is None else max(0, kernel.ndim - len(first.kernel_shape))
    nets.check_shapes(spec, params, batch_dims=lead)
    return tuple(kernel.shape[:lead])


def params_to_graph(spec: nets.Spec, params: nets.Params, edge_dim: int | None = None) -> jraph.GraphsTuple:
    """The graph of one network, or of a stacked population (features gain its leading axes).

    ``edge_dim`` (default: the spec's widest edge) pads edge features wider, for mixing specs.
    Works under ``jit`` and ``vmap``.
    """
    topo = topology(spec)
    edge_dim = edge_dim or topo.edge_dim
    lead = lead_shape(spec, params)
    weights, biases = [], [jnp.zeros(lead + (topo.node_slices[0][0], 1), params[nets.layers(spec)[0].name]["kernel"].dtype)]
    for layer, taps in zip(nets.layers(spec), topo.taps):
        kernel = params[layer.name]["kernel"]
        rank = len(layer.kernel_shape)
        if layer.kind == "conv":  # [..., *window, c_in, c_out] -> [..., c_in, c_out, K]
            window_axes = tuple(range(len(lead), len(lead) + rank - 2))
            kernel = jnp.moveaxis(kernel, window_axes, tuple(range(-len(window_axes), 0)))
        edges = kernel.reshape(lead + (-1, taps))
        weights.append(jnp.pad(edges, [(0, 0)] * (len(lead) + 1) + [(0, edge_dim - taps)]))
        biases.append(params[layer.name]["bias"][..., None])
    return jraph.GraphsTuple(
        nodes={"bias": jnp.concatenate(biases, axis=-2), "kind": topo.node_kind, "index": topo.node_index},
        edges={"weight": jnp.concatenate(weights, axis=-2), "layer": topo.edge_layer},
        senders=topo.senders, receivers=topo.receivers,
        n_node=np.array([topo.num_nodes], np.int32), n_edge=np.array([topo.num_edges], np.int32),
        globals=None,
    )


def graph_to_params(spec: nets.Spec, graph: jraph.GraphsTuple) -> nets.Params:
    """The exact inverse of :func:`params_to_graph` (bitwise), for single or stacked graphs."""
    topo = topology(spec)
    weight, bias = graph.edges["weight"], graph.nodes["bias"]
    if weight.shape[-2] != topo.num_edges or bias.shape[-2] != topo.num_nodes:
        raise nets.SpecError(
            f"graph has {bias.shape[-2]} nodes and {weight.shape[-2]} edges; {nets.describe(spec)} "
            f"has {topo.num_nodes} and {topo.num_edges}"
        )
    lead = tuple(weight.shape[:-2])
    params = {}
    for layer, taps, (e0, e1), (n0, n1) in zip(nets.layers(spec), topo.taps, topo.edge_slices, topo.node_slices):
        edges = weight[..., e0:e1, :taps]
        c_in, c_out = layer.kernel_shape[-2:]
        kernel = edges.reshape(lead + (c_in, c_out) + layer.kernel_shape[:-2])
        if layer.kind == "conv":  # [..., c_in, c_out, *window] -> [..., *window, c_in, c_out]
            rank = len(layer.kernel_shape)
            window_axes = tuple(range(len(lead) + 2, len(lead) + rank))
            kernel = jnp.moveaxis(kernel, window_axes, tuple(range(len(lead), len(lead) + rank - 2)))
        params[layer.name] = {"kernel": kernel, "bias": bias[..., n0:n1, 0]}
    return params


@dataclasses.dataclass(frozen=True, eq=False)
class GraphBatch:
    """Graphs of several architectures in one padded ``GraphsTuple``.

    graph: the padded batch (one extra padding graph); node_mask [N_pad], edge_mask [E_pad]: True
    on real nodes/edges; specs: the architecture of each real graph, in order.
    """

    graph: jraph.GraphsTuple
    node_mask: np.ndarray
    edge_mask: np.ndarray
    specs: tuple[nets.Spec, ...]


def batch_graphs(specs: Sequence[nets.Spec], params: Sequence[nets.Params],
                 pad_nodes: int | None = None, pad_edges: int | None = None) -> GraphBatch:
    """Pads the graphs of single networks of (possibly) different architectures into one batch.

    Node and edge totals are padded to ``pad_nodes``/``pad_edges`` (default: the total + 1, as
    jraph needs at least one padding node) so that batches of equal budgets share one compile.
    """
    if len(specs) != len(params) or not specs:
        raise ValueError(f"batch_graphs needs as many specs as params (got {len(specs)} and {len(params)})")
    edge_dim = max(topology(s).edge_dim for s in specs)
    graphs = [params_to_graph(s, p, edge_dim) for s, p in zip(specs, params)]
    batched = jraph.batch(graphs)
    total_nodes, total_edges = int(batched.n_node.sum()), int(batched.n_edge.sum())
    pad_nodes = pad_nodes or total_nodes + 1
    pad_edges = pad_edges or total_edges
    if pad_nodes <= total_nodes or pad_edges < total_edges:
        raise ValueError(
            f"padding budget too small: {total_nodes} nodes (need > {total_nodes}, got {pad_nodes}) "
            f"and {total_edges} edges (got {pad_edges})"
        )
    padded = jraph.pad_with_graphs(batched, pad_nodes, pad_edges, len(graphs) + 1)
    return GraphBatch(
        graph=padded,
        node_mask=np.arange(pad_nodes) < total_nodes,
        edge_mask=np.arange(pad_edges) < total_edges,
        specs=tuple(specs),
    )


def unbatch_graphs(batch: GraphBatch) -> list[nets.Params]:
    """The params of every real graph of a :class:`GraphBatch`, exactly as batched."""
    out = []
    node_start = edge_start = 0
    for spec in batch.specs:
        topo = topology(spec)
        nodes = {"bias": batch.graph.nodes["bias"][node_start:node_start + topo.num_nodes]}
        edges = {"weight": batch.graph.edges["weight"][edge_start:edge_start + topo.num_edges]}
        out.append(graph_to_params(spec, batch.graph._replace(nodes=nodes, edges=edges)))
        node_start += topo.num_nodes
        edge_start += topo.num_edges
    return out
