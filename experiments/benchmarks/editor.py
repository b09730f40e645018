"""Editor throughput: edits per second over a whole zoo in one call, single-edit latency, graph build.

    python -m experiments.benchmarks.editor [--members 1024] [--hidden 32,32] [--gmn-hidden 32 --gmn-layers 3]

Networks: ReLU MLPs on Adult's 104 inputs (hidden 32,32 by default; random weights, as editing
cost does not depend on them). Measurements, each a JSON line (keys as in DESIGN.md section 5):

* ``edit_throughput`` / ``gmn-vmap``: ``metaedit.gmn.edit`` on the stacked population in one call;
* ``edit_throughput`` / ``gmn-loop``: the same jitted single-network edit called member by member
  (the peer: what a loop over networks gives);
* ``edit_latency`` / ``gmn``: one network, after compilation;
* ``graph_build`` / ``params_to_graph`` and ``graph_to_params``: the stacked conversions, jitted.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from experiments.benchmarks.common import best_seconds, emit, machine
from metaedit import gmn, graphs, nets


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=1024)
    parser.add_argument("--hidden", default="32,32")
    parser.add_argument("--gmn-hidden", type=int, default=32)
    parser.add_argument("--gmn-layers", type=int, default=3)
    parser.add_argument("--loop-members", type=int, default=64, help="members timed in the loop peer")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    spec = nets.parse_arch(f"mlp:{args.hidden}", (104,), 2)
    config = gmn.GMNConfig.for_specs([spec], hidden=args.gmn_hidden, layers=args.gmn_layers)
    editor = gmn.init_editor(config, jax.random.key(0))
    zoo = jax.jit(jax.vmap(lambda k: nets.init(spec, k)))(jax.random.split(jax.random.key(1), args.members))
    condition = jnp.array([0.5, 0.5])
    topo = graphs.topology(spec)
    sizes = {"members": args.members, "arch": nets.describe(spec), "nodes": topo.num_nodes,
             "edges": topo.num_edges, "gmn_hidden": args.gmn_hidden, "gmn_layers": args.gmn_layers,
             **machine()}

    to_graph = jax.jit(lambda p: graphs.params_to_graph(spec, p))
    graph = jax.block_until_ready(to_graph(zoo))
    seconds = best_seconds(lambda: jax.block_until_ready(to_graph(zoo)), args.repeats)
    emit("graph_build", "params_to_graph", seconds / args.members * 1e6, "us/network", seconds=seconds, **sizes)
    to_params = jax.jit(lambda g: graphs.graph_to_params(spec, g))
    jax.block_until_ready(to_params(graph))
    seconds = best_seconds(lambda: jax.block_until_ready(to_params(graph)), args.repeats)
    emit("graph_build", "graph_to_params", seconds / args.members * 1e6, "us/network", seconds=seconds, **sizes)

    started = time.perf_counter()
    jax.block_until_ready(gmn.edit(editor, spec, zoo, condition))
    compile_seconds = time.perf_counter() - started
    seconds = best_seconds(lambda: jax.block_until_ready(gmn.edit(editor, spec, zoo, condition)), args.repeats)
    vmap_rate = args.members / seconds
    emit("edit_throughput", "gmn-vmap", vmap_rate, "edits/s", seconds=seconds,
         first_call_seconds=compile_seconds, **sizes)

    single = jax.jit(lambda p: gmn.edit_one(editor, spec, p, condition))
    members = [jax.tree.map(lambda x, i=i: x[i], zoo) for i in range(min(args.loop_members, args.members))]
    jax.block_until_ready(single(members[0]))

    def loop():
        for params in members:
            out = single(params)
        jax.block_until_ready(out)

    seconds = best_seconds(loop, args.repeats)
    loop_rate = len(members) / seconds
    emit("edit_throughput", "gmn-loop", loop_rate, "edits/s", seconds=seconds, **{**sizes, "members": len(members)})
    emit("edit_throughput_speedup", "gmn-vmap/gmn-loop", vmap_rate / loop_rate, "x", **sizes)

    latency = best_seconds(lambda: jax.block_until_ready(gmn.edit(editor, spec, members[0], condition)), 10)
    emit("edit_latency", "gmn", latency * 1e3, "ms", **{**sizes, "members": 1})


if __name__ == "__main__":
    main()
