"""The graph metanetwork editor: message passing over a network's graph, emitting an edit.

Architecture (flax over a ``jraph.GraphsTuple``): node embeddings from the neuron's identity code
(:mod:`metaedit.graphs`), its bias and, for a data-aware editor, statistics of one forward pass on a
probe batch (:mod:`metaedit.probe`); edge embeddings from the weight vector and the layer; a global
embedding of the **conditioning vector** (the trade-off weight lambda, the requirement's target).
Each of ``layers`` rounds updates the nodes and the global, with residual connections and layer
norm. With ``messages="weights"`` (the default) no edge keeps a state: a node reads the
weight-weighted means of its neighbours' projections (a contraction per layer block), and the heads
read each weight once. With ``messages="edges"`` each round first updates every edge (factorised:
sender and receiver projections computed once per node, then gathered), and a node reads the means
of its outgoing and incoming edges' states. Mean aggregation, shared hidden-neuron codes and
per-neuron statistics make the edit equivariant to permutations of hidden neurons (conv channels).

Heads (:class:`Edit`): per edge a weight residual ``[edge_dim]`` and a keep-logit per weight; per node a bias
residual and a keep-logit; one learned output scale ``s`` (initialised near 0). :func:`apply_edit`
turns them into an edited network:
``W' = keep_edge * keep_sender * (W + s * dW)``, ``b' = b + s * db``; a node's keep-mask acts on all
its outgoing edges (an input node's mask removes that input feature). Masks are exact 0/1 with
``hard=True`` and straight-through estimates otherwise. A budgeted pruning editor (``GMNConfig.budget``)
removes instead each network's ``lambda * target`` share of weights that score lowest.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import jraph

from metaedit import graphs, nets
from metaedit.probe import NUM_FEATURES, NUM_GRAPH_FEATURES, graph_features, node_features
from metaedit.training import Batch


MESSAGES = ("edges", "weights")
"""What a message-passing round passes between neurons (:attr:`GMNConfig.messages`)."""


class EditorError(ValueError):
    """An editor cannot edit the networks it was given (architecture outside its range, bad condition)."""


@dataclasses.dataclass(frozen=True)
class GMNConfig:
    """Sizes of a graph metanetwork and the range of architectures it can read.

    max_inputs / max_outputs: the most input / output neurons (each has its own code);
    max_depth: the most parameter layers; edge_dim: the widest edge feature (conv taps).
    hidden: node and global width; edge_hidden: edge width (edges outnumber nodes 25 to 1 in an
    Adult MLP, so they are kept narrow); probe_features: read the data-aware node statistics of
    :mod:`metaedit.probe` (False: the weight-only editor); num_groups: groups of the sensitive
    attribute in the probe batch (0: none). init_scale: the output scale ``s`` at initialisation;
    keep_bias: the initial keep-logit; head_init: the heads' initial kernels are this fraction of the
    usual (fan-in) scale, so that every mask starts kept. masks: whether the edit may remove weights
    and neurons (False: residuals only, every mask kept); bilinear: the rank of the weight
    residual's bilinear term ``sum_k u_ik v_jk`` over its sender's and receiver's embeddings (a
    change of a whole row shaped by its receivers, e.g. one input's outgoing weights);
    magnitude: add to each weight's keep-logit ``a * z + b``, with ``z`` the weight's log-magnitude
    standardised over its network and ``(a, b)`` read from the global embedding (zero at
    initialisation), so that a mask can follow the weights' magnitudes at any granularity (a conv
    edge's taps) instead of learning it through the narrow edge embedding.
    messages: what a round passes between neurons (edge_hidden is the width of either).
    ``"weights"`` (the default): no edge state; a neuron reads the weight-weighted means of its
    neighbours' projections, ``mean_i sum_k phi_k(w_ij) A_k h_i`` with ``phi(w) = (1, w, |w|)`` per
    weight (matmuls over the dense layer blocks, the way the network itself propagates signals), and
    the edges are read once, by the heads (several times faster). ``"edges"``: every edge keeps a
    hidden state of width edge_hidden, updated each round by a small MLP of its sender, its receiver
    and its weight, and a neuron reads the means of its edges' states.
    """

    max_inputs: int
    max_outputs: int
    max_depth: int
    edge_dim: int = 1
    hidden: int = 32
    layers: int = 3
    condition_dim: int = 2
    init_scale: float = 1e-3
    keep_bias: float = 4.0
    edge_hidden: int = 8
    probe_features: bool = False
    num_groups: int = 0
    head_init: float = 0.1
    masks: bool = True
    bilinear: int = 0
    magnitude: bool = False
    budget: tuple[float, float] | None = None
    messages: str = "weights"

    def __post_init__(self):
        if self.messages not in MESSAGES:
            raise EditorError(f"messages must be one of {', '.join(MESSAGES)}, got {self.messages!r}")
        if self.budget is not None:  # a list when read back from a JSON record
            low, high = (float(v) for v in self.budget)
            if not 0.0 <= low <= high <= 1.0:
                raise EditorError(f"budget must be a target range within [0, 1], got {self.budget}")
            object.__setattr__(self, "budget", (low, high))

    @classmethod
    def for_specs(cls, specs: Sequence[nets.Spec], **options) -> "GMNConfig":
        """The smallest config that reads every spec in ``specs``."""
        topos = [graphs.topology(s) for s in specs]
        return cls(
            max_inputs=max(t.node_slices[0][0] for t in topos),
            max_outputs=max(s.num_classes for s in specs),
            max_depth=max(len(t.taps) for t in topos),
            edge_dim=max(t.edge_dim for t in topos),
            **options,
        )

    @property
    def input_condition_dim(self) -> int:
        """Width of the condition the metanetwork reads: the user's condition and, for a data-aware
        editor, the network's probe statistics (:func:`metaedit.probe.graph_features`)."""
        return self.condition_dim + (NUM_GRAPH_FEATURES if self.probe_features else 0)

    @property
    def vocabulary(self) -> int:
        return self.max_inputs + self.max_depth + self.max_outputs

    def check(self, spec: nets.Spec) -> None:
        """Raises :class:`EditorError` if this editor cannot read networks of ``spec``."""
        topo = graphs.topology(spec)
        limits = [
            ("inputs", topo.node_slices[0][0], self.max_inputs),
            ("outputs", spec.num_classes, self.max_outputs),
            ("parameter layers", len(topo.taps), self.max_depth),
            ("weights per edge", topo.edge_dim, self.edge_dim),
        ]
        for what, have, limit in limits:
            if have > limit:
                raise EditorError(
                    f"architecture {nets.describe(spec)} has {have} {what}; this editor reads at most {limit}"
                )


class Edit(NamedTuple):
    """What the editor emits for one graph (leading axes added for batches).

    weight_delta [E, edge_dim], edge_logit [E, edge_dim] (one keep-logit per weight: a dense edge's
    one, a conv edge's taps), bias_delta [N], node_logit [N], scale [].
    """

    weight_delta: jax.Array
    edge_logit: jax.Array
    bias_delta: jax.Array
    node_logit: jax.Array
    scale: jax.Array


def node_codes(config: GMNConfig, kind: jax.Array, index: jax.Array) -> jax.Array:
    """Embedding ids [N]: inputs 0.., hidden layers max_inputs + layer - 1, outputs after those."""
    return jnp.where(
        kind == graphs.INPUT, index,
        jnp.where(kind == graphs.HIDDEN, config.max_inputs + index - 1,
                  config.max_inputs + config.max_depth + index),
    )


class _MLP(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.width)(nn.gelu(nn.Dense(self.width)(x)))


def _segment_mean(values: jax.Array, segments: jax.Array, count: int) -> jax.Array:
    total = jax.ops.segment_sum(values, segments, count)
    size = jax.ops.segment_sum(jnp.ones(values.shape[:1], values.dtype), segments, count)
    return total / jnp.maximum(size, 1.0)[:, None]


def _standard_log_magnitude(weight: jax.Array, graph_ids: jax.Array, n_graph: int) -> jax.Array:
    """[E, edge_dim]: ``log |w|`` standardised over each graph's non-zero weights (0 where w = 0:
    padded taps and removed weights)."""
    real = (weight != 0).astype(weight.dtype)
    log_magnitude = jnp.log(jnp.where(real > 0, jnp.abs(weight), 1.0))
    count = jnp.maximum(jax.ops.segment_sum(real.sum(-1), graph_ids, n_graph), 1.0)
    mean = jax.ops.segment_sum(log_magnitude.sum(-1), graph_ids, n_graph) / count
    centred = (log_magnitude - mean[graph_ids][:, None]) * real
    std = jnp.sqrt(jax.ops.segment_sum((centred ** 2).sum(-1), graph_ids, n_graph) / count + 1e-6)
    return centred / std[graph_ids][:, None]


def _ordered_bits(values: jax.Array) -> jax.Array:
    """uint32 keys of float32 ``values`` in the same order (the sign bit flipped for positives, every
    bit for negatives)."""
    bits = jax.lax.bitcast_convert_type(values.astype(jnp.float32), jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def _from_ordered_bits(keys: jax.Array) -> jax.Array:
    bits = jnp.where(keys >> 31 == 1, keys & jnp.uint32(0x7FFFFFFF), ~keys)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def budget_threshold(score: jax.Array, real: jax.Array, graph_ids: jax.Array, fraction: jax.Array) -> jax.Array:
    """[n_graph] float32 per graph: the ``k``-th smallest score of its ``n`` real entries, ``k =
    ceil(fraction * n)`` (-inf where k is 0). Removing every real entry whose score is <= it removes
    at least that fraction (all of a tie).

    score, real: [E, d] (real: 1 for a weight that counts, 0 for a padded tap or a zero weight);
    graph_ids [E]; fraction [n_graph] in [0, 1]. Found exactly by bisection over the scores' float32
    bit patterns (32 rounds of counting, each a comparison and a segment sum): no sort, which on a
    CPU cost several times the editor's own forward pass.
    """
    n_graph = fraction.shape[0]
    keys, counted = _ordered_bits(score), (real > 0)
    ids = jnp.broadcast_to(graph_ids[:, None], score.shape)
    count = jax.ops.segment_sum(counted.reshape(-1).astype(jnp.int32), ids.reshape(-1), n_graph)
    k = jnp.ceil(fraction * count - 1e-6).astype(jnp.int32)

    def halve(_, bounds):  # invariant: the k-th smallest key lies in [low, high]
        low, high = bounds
        middle = low + (high - low) // 2
        at_most = jax.ops.segment_sum((counted & (keys <= middle[graph_ids][:, None])).reshape(-1).astype(jnp.int32),
                                      ids.reshape(-1), n_graph)
        enough = at_most >= k
        return jnp.where(enough, low, middle + 1), jnp.where(enough, middle, high)

    full = jnp.full((n_graph,), 0xFFFFFFFF, jnp.uint32)
    _, found = jax.lax.fori_loop(0, 32, halve, (jnp.zeros_like(full), full))
    return jnp.where(k > 0, _from_ordered_bits(found), -jnp.inf)


class _Flat:
    """Edges as one [E, d] array, reached by gathers and segment means: any (padded) batch of graphs."""

    def __init__(self, graph: jraph.GraphsTuple, n_graph: int):
        self.senders, self.receivers = graph.senders, graph.receivers
        self.n_nodes, self.n_graph = graph.nodes["bias"].shape[0], n_graph
        n_edges = graph.edges["weight"].shape[0]
        self.node_graph = jnp.repeat(jnp.arange(n_graph), graph.n_node, total_repeat_length=self.n_nodes)
        self.edge_graph = jnp.repeat(jnp.arange(n_graph), graph.n_edge, total_repeat_length=n_edges)
        self.layer = graph.edges["layer"]

    def edge_graph_ids(self) -> jax.Array:
        """[E] the graph of every edge (in :meth:`flatten`'s order)."""
        return self.edge_graph

    def blocks(self, edge_values: jax.Array) -> list[jax.Array]:
        return [edge_values]

    def layer_ids(self) -> list[jax.Array]:
        return [self.layer]

    def senders_of(self, node_values: jax.Array) -> list[jax.Array]:
        return [node_values[self.senders]]

    def receivers_of(self, node_values: jax.Array) -> list[jax.Array]:
        return [node_values[self.receivers]]

    def bilinear(self, u: jax.Array, v: jax.Array) -> list[jax.Array]:
        """[E, 1] per edge: ``u[sender] . v[receiver]``."""
        return [(u[self.senders] * v[self.receivers]).sum(-1, keepdims=True)]

    def graphs_of_edges(self, graph_values: jax.Array) -> list[jax.Array]:
        return [graph_values[self.edge_graph]]

    def graphs_of_nodes(self, graph_values: jax.Array) -> jax.Array:
        return graph_values[self.node_graph]

    def outgoing_mean(self, edges: list[jax.Array]) -> jax.Array:
        return _segment_mean(edges[0], self.senders, self.n_nodes)

    def incoming_mean(self, edges: list[jax.Array]) -> jax.Array:
        return _segment_mean(edges[0], self.receivers, self.n_nodes)

    def incoming_weighted(self, features: list[jax.Array], values: jax.Array) -> jax.Array:
        """[N, f]: per node, the mean over its incoming edges of ``sum_k features[e, k] * values[sender, k]``
        (features [E, K] per edge, values [N, K, f])."""
        messages = jnp.einsum("ek,ekf->ef", features[0], values[self.senders])
        return _segment_mean(messages, self.receivers, self.n_nodes)

    def outgoing_weighted(self, features: list[jax.Array], values: jax.Array) -> jax.Array:
        """[N, f]: per node, the mean over its outgoing edges of ``sum_k features[e, k] * values[receiver, k]``."""
        messages = jnp.einsum("ek,ekf->ef", features[0], values[self.receivers])
        return _segment_mean(messages, self.senders, self.n_nodes)

    def pool_nodes(self, nodes: jax.Array) -> jax.Array:
        return _segment_mean(nodes, self.node_graph, self.n_graph)

    def pool_edges(self, edges: list[jax.Array]) -> jax.Array:
        return _segment_mean(edges[0], self.edge_graph, self.n_graph)

    def flatten(self, edges: list[jax.Array]) -> jax.Array:
        return edges[0]


class _Blocks:
    """One graph of a known architecture, its edges as dense per-layer blocks [fan_in, fan_out, d]:
    "from the sender" is a broadcast and "mean over outgoing edges" a reduction (no gathers)."""

    def __init__(self, topo: graphs.Topology):
        self.nodes = [(0, topo.node_slices[0][0])] + list(topo.node_slices)  # node range of each position
        self.shapes = [(b - a, d - c) for (a, b), (c, d) in zip(self.nodes[:-1], self.nodes[1:])]
        self.edge_slices, self.n_edges = topo.edge_slices, topo.num_edges

    def edge_graph_ids(self) -> jax.Array:
        return jnp.zeros(self.n_edges, jnp.int32)

    def blocks(self, edge_values: jax.Array) -> list[jax.Array]:
        return [edge_values[a:b].reshape(shape + edge_values.shape[1:]) for (a, b), shape in
                zip(self.edge_slices, self.shapes)]

    def layer_ids(self) -> list[jax.Array]:
        return [jnp.full(shape, layer, jnp.int32) for layer, shape in enumerate(self.shapes)]

    def senders_of(self, node_values: jax.Array) -> list[jax.Array]:
        return [node_values[a:b][:, None, :] for a, b in self.nodes[:-1]]

    def receivers_of(self, node_values: jax.Array) -> list[jax.Array]:
        return [node_values[a:b][None, :, :] for a, b in self.nodes[1:]]

    def bilinear(self, u: jax.Array, v: jax.Array) -> list[jax.Array]:
        """[fan_in, fan_out, 1] per layer: ``u[sender] . v[receiver]`` (one matmul per layer)."""
        return [(u[a:b] @ v[c:d].T)[..., None] for (a, b), (c, d) in zip(self.nodes[:-1], self.nodes[1:])]

    def graphs_of_edges(self, graph_values: jax.Array) -> list[jax.Array]:
        return [graph_values[0]] * len(self.shapes)

    def graphs_of_nodes(self, graph_values: jax.Array) -> jax.Array:
        return graph_values[0]

    def _onto_senders(self, rows: list[jax.Array]) -> jax.Array:
        """[N, f]: per-layer rows [fan_in, f] of the sending nodes, then zeros for the outputs."""
        last = self.nodes[-1]
        return jnp.concatenate(rows + [jnp.zeros((last[1] - last[0], rows[0].shape[-1]), rows[0].dtype)])

    def _onto_receivers(self, rows: list[jax.Array]) -> jax.Array:
        """[N, f]: zeros for the inputs, then per-layer rows [fan_out, f] of the receiving nodes."""
        first = self.nodes[0]
        return jnp.concatenate([jnp.zeros((first[1] - first[0], rows[0].shape[-1]), rows[0].dtype)] + rows)

    def outgoing_mean(self, edges: list[jax.Array]) -> jax.Array:
        return self._onto_senders([e.mean(1) for e in edges])

    def incoming_mean(self, edges: list[jax.Array]) -> jax.Array:
        return self._onto_receivers([e.mean(0) for e in edges])

    def incoming_weighted(self, features: list[jax.Array], values: jax.Array) -> jax.Array:
        """As :meth:`_Flat.incoming_weighted`, one contraction per layer block (features [fan_in, fan_out, K]
        per block, values [N, K, f]; returns [N, f])."""
        return self._onto_receivers([jnp.einsum("iok,ikf->of", phi, values[a:b]) / (b - a)
                                     for phi, (a, b) in zip(features, self.nodes[:-1])])

    def outgoing_weighted(self, features: list[jax.Array], values: jax.Array) -> jax.Array:
        """As :meth:`_Flat.outgoing_weighted` (values [N, K, f]; returns [N, f])."""
        return self._onto_senders([jnp.einsum("iok,okf->if", phi, values[c:d]) / (d - c)
                                   for phi, (c, d) in zip(features, self.nodes[1:])])

    def pool_nodes(self, nodes: jax.Array) -> jax.Array:
        return nodes.mean(0, keepdims=True)

    def pool_edges(self, edges: list[jax.Array]) -> jax.Array:
        return (sum(e.sum((0, 1)) for e in edges) / self.n_edges)[None]

    def flatten(self, edges: list[jax.Array]) -> jax.Array:
        return jnp.concatenate([e.reshape(-1, e.shape[-1]) for e in edges])


class GMN(nn.Module):
    """The graph metanetwork. Call on one ``GraphsTuple`` (from :mod:`metaedit.graphs`, single or
    padded batch), a condition [n_graph, condition_dim] and, for a data-aware editor, the probe
    statistics of every node [N, NUM_FEATURES]; returns an :class:`Edit`. With ``topology`` (one
    graph of that architecture) the edges are laid out as dense per-layer blocks; without, as one
    array reached by gathers (any padded batch). Both compute the same function.

    With ``config.messages == "weights"`` (the default) each round updates the nodes and the global
    only, every node from the weight-weighted means of its neighbours' projections (see
    :meth:`_weight_rounds`). With ``"edges"`` each round updates every edge from its own features,
    projections of its sender and receiver computed once per node and gathered (factorised: no
    per-edge matrix over node widths), the sender's projection gated by the edge's weight (a
    message that flows as the network's own signal does) and the global; then every node from the
    means of its outgoing and incoming edges and the global; then the global (see
    :meth:`_edge_rounds`). Residual connections and layer norm throughout.
    """

    config: GMNConfig
    topology: graphs.Topology | None = None

    def _edge_rounds(self, layout, weight, nodes, edges, globals_):
        """``messages="edges"``: each round updates every edge's state, then every node from the means
        of its edges' states, then the global."""
        c = self.config
        he = c.edge_hidden
        edge_signal = nn.Dense(1, use_bias=False, name="edge_signal")
        signal = [edge_signal(w) for w in weight]  # the weight as a gate
        for i in range(c.layers):
            projected = nn.Dense(3 * he, name=f"node_to_edge_{i}")(nodes)
            edge_dense, edge_norm = nn.Dense(he, name=f"edge_{i}"), nn.LayerNorm(name=f"edge_norm_{i}")
            from_global = layout.graphs_of_edges(nn.Dense(he, name=f"global_to_edge_{i}")(globals_))
            edges = [edge_norm(e + nn.gelu(edge_dense(e) + s[..., :he] + r[..., he:2 * he] + gate * s[..., 2 * he:] + g))
                     for e, s, r, gate, g in zip(edges, layout.senders_of(projected), layout.receivers_of(projected),
                                                 signal, from_global)]
            nodes, globals_ = self._update_nodes_and_global(
                i, layout, nodes, globals_, layout.outgoing_mean(edges), layout.incoming_mean(edges),
                [layout.pool_edges(edges)])
        return nodes, edges, globals_

    def _weight_rounds(self, layout, weight, nodes, edges, globals_):
        """``messages="weights"``: each round updates every node from the weight-weighted means of its
        neighbours' projections (no edge state; messages of width edge_hidden per feature), then the
        global. ``edges`` (the heads' input embeddings) pass through unchanged: the same signature as
        :meth:`_edge_rounds`."""
        c = self.config
        he = c.edge_hidden
        features = [jnp.concatenate([jnp.ones(w.shape[:-1] + (1,), w.dtype), w, jnp.abs(w)], -1) for w in weight]
        k = 1 + 2 * c.edge_dim  # graphs are always padded to the config's edge_dim
        for i in range(c.layers):
            projected = nn.Dense(2 * k * he, name=f"node_to_message_{i}")(nodes).reshape(nodes.shape[0], 2, k, he)
            nodes, globals_ = self._update_nodes_and_global(
                i, layout, nodes, globals_, layout.outgoing_weighted(features, projected[:, 0]),
                layout.incoming_weighted(features, projected[:, 1]))
        return nodes, edges, globals_

    def _update_nodes_and_global(self, i, layout, nodes, globals_, outgoing, incoming, pooled_edges=()):
        """Round ``i``'s residual updates, either kind of message: every node from itself, the
        messages it reads from its outgoing and incoming edges [N, f] and the global; then the global
        from itself, the mean of the new nodes and ``pooled_edges`` (the edge states' mean, if any)."""
        h = self.config.hidden
        update = _MLP(h, name=f"node_{i}")(jnp.concatenate(
            [nodes, outgoing, incoming, jnp.broadcast_to(layout.graphs_of_nodes(globals_), nodes.shape)], -1))
        nodes = nn.LayerNorm(name=f"node_norm_{i}")(nodes + update)
        update = _MLP(h, name=f"global_{i}")(jnp.concatenate([globals_, layout.pool_nodes(nodes), *pooled_edges], -1))
        return nodes, nn.LayerNorm(name=f"global_norm_{i}")(globals_ + update)

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, condition: jax.Array, node_stats: jax.Array | None = None) -> Edit:
        c = self.config
        h, he = c.hidden, c.edge_hidden
        layout = _Flat(graph, condition.shape[0]) if self.topology is None else _Blocks(self.topology)
        node_in = graph.nodes["bias"] if not c.probe_features else jnp.concatenate([graph.nodes["bias"], node_stats], -1)
        nodes = nn.Embed(c.vocabulary, h, name="node_code")(node_codes(c, graph.nodes["kind"], graph.nodes["index"]))
        nodes = nodes + nn.Dense(h, name="node_in")(node_in)
        weight = layout.blocks(graph.edges["weight"])
        edge_in, edge_layer = nn.Dense(he, name="edge_in"), nn.Embed(c.max_depth, he, name="edge_layer")
        edges = [edge_in(w) + edge_layer(ids) for w, ids in zip(weight, layout.layer_ids())]
        globals_ = nn.Dense(h, name="condition_in")(condition)
        rounds = self._edge_rounds if c.messages == "edges" else self._weight_rounds
        nodes, edges, globals_ = rounds(layout, weight, nodes, edges, globals_)
        # FiLM: the condition also scales and shifts the features the heads read, a direct path
        # from lambda and the target to every edit (through the globals alone it was learnt slowly)
        film = nn.Dense(2 * he + 2 * h, kernel_init=nn.initializers.zeros, name="condition_film")(condition)
        edges = [e * (1 + f[..., :he]) + f[..., he:2 * he] for e, f in zip(edges, layout.graphs_of_edges(film))]
        node_film = layout.graphs_of_nodes(film)
        nodes = nodes * (1 + node_film[..., 2 * he:2 * he + h]) + node_film[..., 2 * he + h:]
        head_init = nn.initializers.variance_scaling(c.head_init ** 2, "fan_in", "truncated_normal")
        width = 2 * c.edge_dim  # per edge: a residual and a keep-logit per weight (a conv edge's taps)
        ends = nn.Dense(2 * width, kernel_init=head_init, name="node_to_edge_head")(nodes)
        edge_head = nn.Dense(width, kernel_init=head_init, name="edge_head")
        parts = [edge_head(e) + s[..., :width] + r[..., width:] for e, s, r in
                 zip(edges, layout.senders_of(ends), layout.receivers_of(ends))]
        if c.messages == "weights":  # no edge state: terms in w and |w| with per-neuron gains, from both ends
            gates = nn.Dense(4 * width, kernel_init=head_init, name="weight_gate_head")(nodes)
            tiled = [jnp.concatenate([w, w], -1) for w in weight]  # a weight's residual and its keep-logit
            parts = [p + ww * (s[..., :width] + r[..., :width]) + jnp.abs(ww) * (s[..., width:] + r[..., width:])
                     for p, ww, s, r in zip(parts, tiled, layout.senders_of(gates[:, :2 * width]),
                                            layout.receivers_of(gates[:, 2 * width:]))]
        if c.bilinear:
            factors = nn.Dense(2 * c.bilinear, kernel_init=head_init, name="bilinear_head")(nodes)
            rows = layout.bilinear(factors[:, :c.bilinear], factors[:, c.bilinear:])
            parts = [p + jnp.pad(b, [(0, 0)] * (b.ndim - 1) + [(0, width - 1)]) for p, b in zip(parts, rows)]
        edge_out = layout.flatten(parts)
        node_out = nn.Dense(2, kernel_init=head_init, name="node_head")(nodes)
        scale = self.param("output_scale", nn.initializers.constant(c.init_scale), ())
        # the edit grows with lambda (condition[:, 0]) from exactly the identity at lambda = 0
        strength = condition[:, 0]
        edge_strength = layout.flatten([jnp.broadcast_to(g[..., None], e.shape[:-1] + (1,)) for e, g in
                                        zip(edges, layout.graphs_of_edges(strength))])
        node_strength = jnp.broadcast_to(layout.graphs_of_nodes(strength), nodes.shape[:1])[:, None]
        edge_out, node_out = edge_strength * edge_out, node_strength * node_out
        edge_logit, node_logit = edge_out[..., c.edge_dim:] + c.keep_bias, node_out[..., 1] + c.keep_bias
        ids = layout.edge_graph_ids()
        if c.magnitude or c.budget is not None:  # each weight's standardised log-magnitude, once
            log_magnitude = _standard_log_magnitude(graph.edges["weight"], ids, condition.shape[0])
        if c.magnitude:
            gain = nn.Dense(2, kernel_init=nn.initializers.zeros, name="magnitude_head")(globals_)[ids]
            edge_logit = edge_logit + edge_strength[:, :1] * (gain[:, :1] * log_magnitude + gain[:, 1:])
        if c.budget is not None:  # remove the lambda * target share of each network's weights scoring lowest
            low, high = c.budget
            real = (graph.edges["weight"] != 0).astype(edge_logit.dtype)
            score = (edge_logit + log_magnitude).astype(jnp.float32)  # the threshold is exact in float32
            fraction = jnp.clip(condition[:, 0] * (low + condition[:, 1] * (high - low)), 0.0, 1.0)
            threshold = jax.lax.stop_gradient(budget_threshold(score, real, ids, fraction))
            edge_logit = jnp.where(real > 0, score - threshold[ids][:, None], -1.0)
            node_logit = jnp.ones_like(node_logit)
        if not c.masks:  # residuals only: every weight and neuron kept
            edge_logit, node_logit = jnp.ones_like(edge_logit), jnp.ones_like(node_logit)
        return Edit(
            weight_delta=edge_out[..., : c.edge_dim],
            edge_logit=edge_logit,
            bias_delta=node_out[..., 0],
            node_logit=node_logit,
            scale=scale,
        )


@flax.struct.dataclass
class Editor:
    """A graph metanetwork's config (static), its variables, and for a data-aware editor the probe
    batch its node statistics are computed on (a :class:`metaedit.training.Batch`, else None)."""

    config: GMNConfig = flax.struct.field(pytree_node=False)
    variables: Any
    probe: Batch | None = None


def init_editor(config: GMNConfig, key: jax.Array, probe: Batch | None = None) -> Editor:
    """A freshly initialised editor (almost the identity edit: ``s = config.init_scale``)."""
    if config.probe_features and probe is None:
        raise EditorError("a data-aware editor (probe_features) needs a probe batch")
    return Editor(config=config, variables=init_variables(config, key), probe=probe)


@functools.partial(jax.jit, static_argnums=0)
def init_variables(config: GMNConfig, key: jax.Array):
    """The metanetwork's freshly initialised variables (a pytree)."""
    spec = nets.MLPSpec((config.max_inputs,), (2,) * (config.max_depth - 1), config.max_outputs)
    graph = graphs.params_to_graph(spec, nets.init(spec, jax.random.key(0)), config.edge_dim)
    stats = jnp.zeros((graphs.topology(spec).num_nodes, NUM_FEATURES))
    return GMN(config).init(key, graph, jnp.zeros((1, config.input_condition_dim)), stats)


def node_stats(editor: Editor, spec: nets.Spec, params: nets.Params) -> jax.Array | None:
    """The probe statistics [N, NUM_FEATURES] of one network (None for a weight-only editor)."""
    if not editor.config.probe_features:
        return None
    return node_features(spec, params, editor.probe, editor.config.num_groups)


def full_condition(editor: Editor, spec: nets.Spec, params: nets.Params, condition: jax.Array) -> jax.Array:
    """[input_condition_dim]: the condition [condition_dim] of one network, then (data-aware
    editor) the network's graph statistics on the probe batch."""
    if not editor.config.probe_features:
        return condition
    return jnp.concatenate([condition, graph_features(spec, params, editor.probe, editor.config.num_groups)])


def keep_mask(logits: jax.Array, hard: bool) -> jax.Array:
    """Exact 0/1 ``logits > 0`` when ``hard``; else the straight-through estimate (value 0/1,
    gradient of ``sigmoid(logits)``)."""
    exact = (logits > 0).astype(logits.dtype)
    if hard:
        return exact
    soft = jax.nn.sigmoid(logits)
    return soft + jax.lax.stop_gradient(exact - soft)


def apply_edit_to_graph(graph: jraph.GraphsTuple, edit: Edit, hard: bool = True) -> jraph.GraphsTuple:
    """The edited graph: ``W' = keep_edge * keep_sender * (W + s dW)``, ``b' = b + s db``.

    Works on a single graph and on a padded batch of graphs alike.
    """
    node_keep = keep_mask(edit.node_logit, hard)
    edge_keep = keep_mask(edit.edge_logit, hard) * node_keep[graph.senders][:, None]
    weight = edge_keep * (graph.edges["weight"] + edit.scale * edit.weight_delta)
    bias = graph.nodes["bias"] + edit.scale * edit.bias_delta[:, None]
    return graph._replace(nodes={**graph.nodes, "bias": bias}, edges={**graph.edges, "weight": weight})


def apply_edit(spec: nets.Spec, params: nets.Params, edit: Edit, hard: bool = True) -> nets.Params:
    """The edited network for one network and its :class:`Edit`."""
    graph = graphs.params_to_graph(spec, params, edit.weight_delta.shape[-1])
    return graphs.graph_to_params(spec, apply_edit_to_graph(graph, edit, hard))


@functools.partial(jax.jit, static_argnames=("spec",))
def predict_edit(editor: Editor, spec: nets.Spec, params: nets.Params, condition: jax.Array) -> Edit:
    """The editor's raw output for one network and condition [condition_dim] (jitted)."""
    graph = graphs.params_to_graph(spec, params, editor.config.edge_dim)
    return GMN(editor.config, graphs.topology(spec)).apply(editor.variables, graph,
                                                           full_condition(editor, spec, params, condition)[None],
                                                           node_stats(editor, spec, params))


def edit_one(editor: Editor, spec: nets.Spec, params: nets.Params, condition: jax.Array,
             hard: bool = True) -> nets.Params:
    """Edits one network: a pure, jit- and vmap-able function (no checks)."""
    return apply_edit(spec, params, predict_edit(editor, spec, params, condition), hard)


@functools.partial(jax.jit, static_argnames=("spec", "hard", "stacked", "member_chunk"))
def _edit(editor, spec, params, condition, hard, stacked, member_chunk):
    if not stacked:
        return edit_one(editor, spec, params, condition, hard)
    return jax.lax.map(lambda pc: edit_one(editor, spec, pc[0], pc[1], hard), (params, condition),
                       batch_size=member_chunk)


def edit(editor: Editor, spec: nets.Spec, params: nets.Params, condition: Any, hard: bool = True,
         member_chunk: int = 16) -> nets.Params:
    """Edits one network or a whole stacked population ``[P, ...]`` in one jitted call.

    condition: [condition_dim] (shared by all members) or [P, condition_dim]. Checks first that
    the params fit ``spec`` (shapes, finite values) and that the editor can read ``spec``.
    A population is edited ``member_chunk`` members at a time (vmapped within a chunk, chunks in
    a loop inside the same compiled call), which keeps the editor's activations in cache.
    """
    editor.config.check(spec)
    lead = graphs.lead_shape(spec, params)
    if len(lead) > 1:
        raise EditorError(f"params have population axes {lead}; stack members along one axis")
    nets.validate_params(spec, params, batch_dims=len(lead))
    condition = jnp.asarray(condition, jnp.float32)
    dim = editor.config.condition_dim
    if condition.shape[-1:] != (dim,) or condition.ndim > 1 + len(lead) or (
            condition.ndim == 2 and condition.shape[0] != lead[0]):
        raise EditorError(
            f"condition has shape {tuple(condition.shape)}; expected [{dim}]"
            + (f" or [{lead[0]}, {dim}]" if lead else "")
        )
    if lead and condition.ndim == 1:
        condition = jnp.broadcast_to(condition, lead + (dim,))
    if not bool(jnp.isfinite(condition).all()):
        raise EditorError("condition holds NaN or Inf")
    if member_chunk < 1:
        raise EditorError(f"member_chunk must be >= 1, got {member_chunk}")
    return _edit(editor, spec, params, condition, hard=hard, stacked=bool(lead),
                 member_chunk=min(member_chunk, lead[0]) if lead else 1)


@functools.partial(jax.jit, static_argnames=("hard",))
def _edit_graph(editor, graph, condition, stats, hard):
    return apply_edit_to_graph(graph, GMN(editor.config).apply(editor.variables, graph, condition, stats), hard)


def edit_batch(editor: Editor, batch: graphs.GraphBatch, condition: Any, hard: bool = True) -> list[nets.Params]:
    """Edits a padded batch of networks of mixed architectures in one call.

    condition: [condition_dim] (shared) or [len(batch.specs), condition_dim]. Returns the edited
    params of each network, in batch order.
    """
    for spec in batch.specs:
        editor.config.check(spec)
    dim, count = editor.config.condition_dim, len(batch.specs)
    condition = jnp.asarray(condition, jnp.float32)
    if condition.shape not in ((dim,), (count, dim)):
        raise EditorError(f"condition has shape {tuple(condition.shape)}; expected [{dim}] or [{count}, {dim}]")
    condition = jnp.broadcast_to(condition, (count, dim))
    networks = graphs.unbatch_graphs(batch)
    condition = jnp.stack([full_condition(editor, s, p, c) for s, p, c in zip(batch.specs, networks, condition)])
    padded = jnp.concatenate([condition, jnp.zeros((1, condition.shape[1]))])  # the padding graph's condition
    stats = None
    if editor.config.probe_features:
        per_network = [node_stats(editor, s, p) for s, p in zip(batch.specs, networks)]
        stats = jnp.concatenate(per_network)
        stats = jnp.pad(stats, ((0, batch.graph.nodes["bias"].shape[0] - stats.shape[0]), (0, 0)))
    edited = _edit_graph(editor, batch.graph, padded, stats, hard=hard)
    return graphs.unbatch_graphs(dataclasses.replace(batch, graph=edited))
