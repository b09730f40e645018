"""The graph metanetwork editor: message passing over a network's graph, emitting an edit.

Architecture (flax over ``jraph.GraphNetwork``): node embeddings from the neuron's identity code
(:mod:`metaedit.graphs`) and bias; edge embeddings from the weight vector and the layer; a global
embedding of the **conditioning vector** (the trade-off weight lambda, the requirement's target, ...).
Each of ``layers`` rounds updates edges from (edge, sender, receiver, global), nodes from (node,
mean of outgoing edges, mean of incoming edges, global) and the global from the means of both, with
residual connections and layer norm. Mean aggregation and shared hidden-neuron codes make the edit
equivariant to permutations of hidden neurons (conv channels).

Heads (:class:`Edit`): per edge a weight residual ``[edge_dim]`` and a keep-logit; per node a bias
residual and a keep-logit; one learned output scale ``s`` (initialised near 0). :func:`apply_edit`
turns them into an edited network:
``W' = keep_edge * keep_sender * (W + s * dW)``, ``b' = b + s * db``; a node's keep-mask acts on all
its outgoing edges (an input node's mask removes that input feature). Masks are exact 0/1 with
``hard=True`` and straight-through estimates otherwise.
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


class EditorError(ValueError):
    """An editor cannot edit the networks it was given (architecture outside its range, bad condition)."""


@dataclasses.dataclass(frozen=True)
class GMNConfig:
    """Sizes of a graph metanetwork and the range of architectures it can read.

    max_inputs / max_outputs: the most input / output neurons (each has its own code);
    max_depth: the most parameter layers; edge_dim: the widest edge feature (conv taps).
    init_scale: the output scale ``s`` at initialisation; keep_bias: the initial keep-logit.
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

    weight_delta [E, edge_dim], edge_logit [E], bias_delta [N], node_logit [N], scale [].
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


class GMN(nn.Module):
    """The graph metanetwork. Call on one ``GraphsTuple`` (from :mod:`metaedit.graphs`, single or
    padded batch) and a condition [n_graph, condition_dim]; returns an :class:`Edit`."""

    config: GMNConfig

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, condition: jax.Array) -> Edit:
        c = self.config
        h = c.hidden
        codes = node_codes(c, graph.nodes["kind"], graph.nodes["index"])
        nodes = nn.Embed(c.vocabulary, h, name="node_code")(codes) + nn.Dense(h, name="node_in")(graph.nodes["bias"])
        edges = nn.Dense(h, name="edge_in")(graph.edges["weight"]) + nn.Embed(
            c.max_depth, h, name="edge_layer")(graph.edges["layer"])
        globals_ = nn.Dense(h, name="condition_in")(condition)
        for i in range(c.layers):
            edge_mlp, node_mlp, global_mlp = _MLP(h, name=f"edge_{i}"), _MLP(h, name=f"node_{i}"), _MLP(h, name=f"global_{i}")
            network = jraph.GraphNetwork(
                update_edge_fn=lambda e, s, r, g: edge_mlp(jnp.concatenate([e, s, r, g], -1)),
                update_node_fn=lambda n, out, inc, g: node_mlp(jnp.concatenate([n, out, inc, g], -1)),
                update_global_fn=lambda n, e, g: global_mlp(jnp.concatenate([n, e, g], -1)),
                aggregate_edges_for_nodes_fn=jraph.segment_mean,
                aggregate_nodes_for_globals_fn=jraph.segment_mean,
                aggregate_edges_for_globals_fn=jraph.segment_mean,
            )
            updated = network(graph._replace(nodes=nodes, edges=edges, globals=globals_))
            nodes = nn.LayerNorm(name=f"node_norm_{i}")(nodes + updated.nodes)
            edges = nn.LayerNorm(name=f"edge_norm_{i}")(edges + updated.edges)
            globals_ = nn.LayerNorm(name=f"global_norm_{i}")(globals_ + updated.globals)
        # FiLM: the condition also scales and shifts the features the heads read, a direct path
        # from lambda and the target to every edit (through the globals alone it was learnt slowly)
        film = nn.Dense(4 * h, kernel_init=nn.initializers.zeros, name="condition_film")(condition)
        per_edge = jnp.repeat(film[:, : 2 * h], graph.n_edge, axis=0, total_repeat_length=edges.shape[0])
        per_node = jnp.repeat(film[:, 2 * h:], graph.n_node, axis=0, total_repeat_length=nodes.shape[0])
        edges = edges * (1 + per_edge[:, :h]) + per_edge[:, h:]
        nodes = nodes * (1 + per_node[:, :h]) + per_node[:, h:]
        edge_out = nn.Dense(c.edge_dim + 1, name="edge_head")(edges)
        node_out = nn.Dense(2, name="node_head")(nodes)
        scale = self.param("output_scale", nn.initializers.constant(c.init_scale), ())
        return Edit(
            weight_delta=edge_out[..., : c.edge_dim],
            edge_logit=edge_out[..., c.edge_dim] + c.keep_bias,
            bias_delta=node_out[..., 0],
            node_logit=node_out[..., 1] + c.keep_bias,
            scale=scale,
        )


@flax.struct.dataclass
class Editor:
    """A graph metanetwork's config (static) and its variables (a pytree)."""

    config: GMNConfig = flax.struct.field(pytree_node=False)
    variables: Any


def init_editor(config: GMNConfig, key: jax.Array) -> Editor:
    """A freshly initialised editor (almost the identity edit: ``s = config.init_scale``)."""
    return Editor(config=config, variables=_init_variables(config, key))


@functools.partial(jax.jit, static_argnums=0)
def _init_variables(config: GMNConfig, key: jax.Array):
    spec = nets.MLPSpec((config.max_inputs,), (2,) * (config.max_depth - 1), config.max_outputs)
    graph = graphs.params_to_graph(spec, nets.init(spec, jax.random.key(0)), config.edge_dim)
    return GMN(config).init(key, graph, jnp.zeros((1, config.condition_dim)))


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
    edge_keep = keep_mask(edit.edge_logit, hard) * node_keep[graph.senders]
    weight = edge_keep[:, None] * (graph.edges["weight"] + edit.scale * edit.weight_delta)
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
    return GMN(editor.config).apply(editor.variables, graph, condition[None])


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
def _edit_graph(editor, graph, condition, hard):
    return apply_edit_to_graph(graph, GMN(editor.config).apply(editor.variables, graph, condition), hard)


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
    padded = jnp.concatenate([condition, jnp.zeros((1, dim))])  # the padding graph's condition
    edited = _edit_graph(editor, batch.graph, padded, hard=hard)
    return graphs.unbatch_graphs(dataclasses.replace(batch, graph=edited))
