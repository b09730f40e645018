from pathlib import Path

import jax
import numpy as np
import pytest

from metaedit import graphs, nets

SPECS = [
    nets.MLPSpec((10,), (8, 6), 3),
    nets.MLPSpec((5,), (), 2),
    nets.CNNSpec((8, 8, 1), (4, 6), 10),
    nets.CNNSpec((40, 1), (5, 3), 10, kernel_size=5),
]


def random_params(spec, seed=0, members=None):
    """Params with random (non-zero) biases too, so the round trip checks every value."""
    def one(key):
        k1, k2 = jax.random.split(key)
        params = nets.init(spec, k1)
        keys = jax.random.split(k2, len(params))
        return {name: {"kernel": layer["kernel"], "bias": jax.random.normal(k, layer["bias"].shape)}
                for (name, layer), k in zip(sorted(params.items()), keys)}
    key = jax.random.key(seed)
    return one(key) if members is None else jax.vmap(one)(jax.random.split(key, members))


def assert_bitwise(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.shape == y.shape and x.dtype == y.dtype
        assert np.array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("spec", SPECS, ids=nets.describe)
@pytest.mark.parametrize("members", [None, 3])
def test_round_trip_is_bitwise(spec, members):
    params = random_params(spec, members=members)
    graph = graphs.params_to_graph(spec, params)
    assert_bitwise(graphs.graph_to_params(spec, graph), params)
    jitted = jax.jit(lambda p: graphs.graph_to_params(spec, graphs.params_to_graph(spec, p)))
    assert_bitwise(jitted(params), params)


@pytest.mark.parametrize("spec", SPECS, ids=nets.describe)
def test_one_node_per_neuron_one_edge_per_weight(spec):
    topo = graphs.topology(spec)
    all_layers = nets.layers(spec)
    neurons = all_layers[0].kernel_shape[-2] + sum(l.kernel_shape[-1] for l in all_layers)
    weights = sum(np.prod(l.kernel_shape) for l in all_layers)
    connections = sum(l.kernel_shape[-2] * l.kernel_shape[-1] for l in all_layers)
    graph = graphs.params_to_graph(spec, nets.init(spec, jax.random.key(0)))
    assert topo.num_nodes == neurons == graph.nodes["bias"].shape[0] == int(graph.n_node[0])
    assert topo.num_edges == connections == int(graph.n_edge[0])
    assert sum((e1 - e0) * t for (e0, e1), t in zip(topo.edge_slices, topo.taps)) == weights
    assert weights + sum(l.bias_shape[0] for l in all_layers) == nets.num_params(spec)


@pytest.mark.parametrize("spec", [SPECS[0], SPECS[2], SPECS[3]], ids=nets.describe)
def test_each_edge_carries_its_weight(spec):
    params = random_params(spec)
    graph = graphs.params_to_graph(spec, params)
    topo = graphs.topology(spec)
    rng = np.random.default_rng(0)
    for layer, (e0, e1), taps in zip(nets.layers(spec), topo.edge_slices, topo.taps):
        kernel = np.asarray(params[layer.name]["kernel"])
        sender_base, receiver_base = topo.senders[e0:e1].min(), topo.receivers[e0:e1].min()
        for e in rng.integers(e0, e1, 10):
            i, j = topo.senders[e] - sender_base, topo.receivers[e] - receiver_base
            expected = kernel[..., i, j].reshape(-1)
            np.testing.assert_array_equal(np.asarray(graph.edges["weight"][e, :taps]), expected)
            assert not np.asarray(graph.edges["weight"][e, taps:]).any()
        (n0, n1) = topo.node_slices[nets.layers(spec).index(layer)]
        np.testing.assert_array_equal(np.asarray(graph.nodes["bias"][n0:n1, 0]), params[layer.name]["bias"])


def test_node_codes_identify_inputs_and_outputs_but_not_hidden_neurons():
    spec = SPECS[0]
    topo = graphs.topology(spec)
    codes = list(zip(topo.node_kind.tolist(), topo.node_index.tolist()))
    inputs = codes[:10]
    hidden_1, hidden_2, outputs = codes[10:18], codes[18:24], codes[24:]
    assert len(set(inputs)) == 10 and len(set(outputs)) == 3
    assert len(set(hidden_1)) == 1 and len(set(hidden_2)) == 1 and hidden_1[0] != hidden_2[0]
    assert set(inputs).isdisjoint(outputs)
    assert (topo.node_layer[topo.senders] + 1 == topo.node_layer[topo.receivers]).all()  # forward edges


def test_mixed_batch_round_trip():
    specs = [SPECS[0], SPECS[2], SPECS[1], SPECS[3]]
    params = [random_params(s, seed=i) for i, s in enumerate(specs)]
    batch = graphs.batch_graphs(specs, params, pad_nodes=400, pad_edges=500)
    assert batch.graph.nodes["bias"].shape == (400, 1) and batch.graph.edges["weight"].shape == (500, 9)
    assert batch.node_mask.sum() == sum(graphs.topology(s).num_nodes for s in specs)
    assert batch.edge_mask.sum() == sum(graphs.topology(s).num_edges for s in specs)
    for original, restored in zip(params, graphs.unbatch_graphs(batch)):
        assert_bitwise(restored, original)
    with pytest.raises(ValueError, match="padding budget too small"):
        graphs.batch_graphs(specs, params, pad_nodes=10)


def test_mismatched_params_are_refused():
    spec = SPECS[0]
    with pytest.raises(nets.SpecError, match=r"dense_0/kernel has shape \(10, 8\); mlp:9,6 needs"):
        graphs.params_to_graph(nets.MLPSpec((10,), (9, 6), 3), random_params(spec))
    with pytest.raises(nets.SpecError, match=r"dense_2/kernel has shape \(6, 3\); mlp:8,6 needs \[6, 4\]"):
        graphs.params_to_graph(nets.MLPSpec((10,), (8, 6), 4), random_params(spec))
    graph = graphs.params_to_graph(spec, random_params(spec))
    with pytest.raises(nets.SpecError, match="graph has 27 nodes and 146 edges; mlp:8,7 has 28 and 157"):
        graphs.graph_to_params(nets.MLPSpec((10,), (8, 7), 3), graph)


def test_removed_jraph_helpers_are_not_used():
    source = "".join(p.read_text() for p in Path(graphs.__file__).parent.glob("*.py"))
    for name in ("zero_out_padding", "with_zero_out_padding_outputs", "get_fully_connected_graph"):
        assert name not in source


def test_a_flattening_cnn_head_is_refused_by_name():
    with pytest.raises(nets.SpecError, match="cnn:8,1/k5/valid,same/flatten flattens its feature map"):
        graphs.topology(nets.paper_cnn())
