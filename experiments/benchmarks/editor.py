"""Editor throughput: edits per second over a whole zoo in one call, single-edit latency, graph build.

    python -m experiments.benchmarks.editor [--members 1024] [--hidden 32,32] [--gmn-hidden 32 --gmn-layers 3]
        [--gmn-edge-hidden 8] [--bilinear 0] [--messages weights] [--member-chunks 4,16,64] [--cpu-devices 2]

Networks: ReLU MLPs on Adult's 104 inputs (hidden 32,32 by default; random weights, as editing
cost does not depend on them). Measurements, each a JSON line (keys as in DESIGN.md section 5):

* ``edit_throughput`` / ``gmn-vmap``: ``metaedit.gmn.edit`` on the stacked population in one call,
  at each ``--member-chunks`` value (members vmapped together inside the call's loop);
* ``edit_throughput`` / ``gmn-sharded``: with ``--cpu-devices N`` (N > 1), the population split over
  N XLA CPU devices (one per core) and each shard edited as above;
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
from jax.sharding import PartitionSpec

from metaedit import gmn, graphs, nets
from metaedit.sharding import Placement, use_cpu_cores


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=1024)
    parser.add_argument("--hidden", default="32,32")
    parser.add_argument("--gmn-hidden", type=int, default=32)
    parser.add_argument("--gmn-layers", type=int, default=3)
    parser.add_argument("--gmn-edge-hidden", type=int, default=8)
    parser.add_argument("--bilinear", type=int, default=0, help="rank of the bilinear head (0: none)")
    parser.add_argument("--messages", default="weights", choices=gmn.MESSAGES,
                        help="what a round passes between neurons (edge states or weight-weighted projections)")
    parser.add_argument("--member-chunks", default="16", help="comma-separated members vmapped together")
    parser.add_argument("--cpu-devices", type=int, default=1, help="XLA CPU devices to shard the population over")
    parser.add_argument("--loop-members", type=int, default=64, help="members timed in the loop peer")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.cpu_devices > 1:
        use_cpu_cores(args.cpu_devices)

    spec = nets.parse_arch(f"mlp:{args.hidden}", (104,), 2)
    config = gmn.GMNConfig.for_specs([spec], hidden=args.gmn_hidden, layers=args.gmn_layers,
                                     edge_hidden=args.gmn_edge_hidden, bilinear=args.bilinear, messages=args.messages)
    editor = gmn.init_editor(config, jax.random.key(0))
    zoo = jax.jit(jax.vmap(lambda k: nets.init(spec, k)))(jax.random.split(jax.random.key(1), args.members))
    condition = jnp.array([0.5, 0.5])
    topo = graphs.topology(spec)
    sizes = {"members": args.members, "arch": nets.describe(spec), "nodes": topo.num_nodes,
             "edges": topo.num_edges, "gmn_hidden": args.gmn_hidden, "gmn_layers": args.gmn_layers,
             "gmn_edge_hidden": args.gmn_edge_hidden, "bilinear": args.bilinear,
             "messages": args.messages,
             **machine()}

    to_graph = jax.jit(lambda p: graphs.params_to_graph(spec, p))
    graph = jax.block_until_ready(to_graph(zoo))
    seconds = best_seconds(lambda: jax.block_until_ready(to_graph(zoo)), args.repeats)
    emit("graph_build", "params_to_graph", seconds / args.members * 1e6, "us/network", seconds=seconds, **sizes)
    to_params = jax.jit(lambda g: graphs.graph_to_params(spec, g))
    jax.block_until_ready(to_params(graph))
    seconds = best_seconds(lambda: jax.block_until_ready(to_params(graph)), args.repeats)
    emit("graph_build", "graph_to_params", seconds / args.members * 1e6, "us/network", seconds=seconds, **sizes)

    vmap_rate = 0.0
    for chunk in (int(c) for c in args.member_chunks.split(",")):
        started = time.perf_counter()
        jax.block_until_ready(gmn.edit(editor, spec, zoo, condition, member_chunk=chunk))
        compile_seconds = time.perf_counter() - started
        seconds = best_seconds(lambda: jax.block_until_ready(gmn.edit(editor, spec, zoo, condition, member_chunk=chunk)),
                               args.repeats)
        vmap_rate = max(vmap_rate, args.members / seconds)
        emit("edit_throughput", "gmn-vmap", args.members / seconds, "edits/s", seconds=seconds,
             first_call_seconds=compile_seconds, member_chunk=chunk, **sizes)
    if len(jax.devices()) > 1:
        placement = Placement()
        sharded = placement.put_population(zoo)
        edit_shards = jax.jit(jax.shard_map(
            lambda p: jax.lax.map(lambda one: gmn.edit_one(editor, spec, one, condition), p, batch_size=16),
            mesh=placement.mesh, in_specs=PartitionSpec("pop"), out_specs=PartitionSpec("pop")))
        started = time.perf_counter()
        jax.block_until_ready(edit_shards(sharded))
        compile_seconds = time.perf_counter() - started
        seconds = best_seconds(lambda: jax.block_until_ready(edit_shards(sharded)), args.repeats)
        emit("edit_throughput", "gmn-sharded", args.members / seconds, "edits/s", seconds=seconds,
             first_call_seconds=compile_seconds, member_chunk=16, **sizes)

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
