"""Placement of a population across devices: the population axis is sharded over a ``pop`` mesh axis.

The same code runs on one device (a one-device mesh) and on several: with several devices (GPUs, TPU cores, simulated CPU devices via
``XLA_FLAGS=--xla_force_host_platform_device_count=8``, or many hosts after
``jax.distributed.initialize()``), every array with a leading population axis is placed with
``NamedSharding(mesh, P("pop"))`` and shared data is replicated. Global arrays are built with
``jax.make_array_from_callback`` from host data that every process computes identically, so the
same code runs on one host or many.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class Placement:
    """Where population-stacked and shared arrays live: a 1-D ``pop`` mesh over ``devices``."""

    def __init__(self, devices: list | None = None):
        devices = list(jax.devices() if devices is None else devices)
        self.num_devices = len(devices)
        self.mesh = Mesh(np.array(devices), ("pop",))
        self.population = NamedSharding(self.mesh, PartitionSpec("pop"))
        """Sharding of arrays whose leading axis is the population."""
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        """Sharding of arrays every device holds whole (training data)."""

    def padded_size(self, members: int) -> int:
        """The smallest multiple of the device count that holds ``members``."""
        return -(-members // self.num_devices) * self.num_devices

    def put(self, tree: Any, sharding: NamedSharding) -> Any:
        """Host (numpy or jax) arrays -> global jax arrays with ``sharding``."""

        def place(leaf):
            host = np.asarray(leaf)
            return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

        return jax.tree.map(place, tree)

    def put_population(self, tree: Any) -> Any:
        return self.put(tree, self.population)

    def put_replicated(self, tree: Any) -> Any:
        return self.put(tree, self.replicated)

    def abstract_population(self, tree: Any) -> Any:
        """ShapeDtypeStructs of ``tree`` carrying the population sharding (for checkpoint restore)."""
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.population), tree
        )


def pad_population(tree: Any, size: int) -> Any:
    """Pads the leading axis of every (host) leaf to ``size`` by repeating the last member."""

    def pad(leaf):
        leaf = np.asarray(leaf)
        extra = size - leaf.shape[0]
        if extra <= 0:
            return leaf
        return np.concatenate([leaf, np.repeat(leaf[-1:], extra, axis=0)], axis=0)

    return jax.tree.map(pad, tree)


def use_cpu_cores(count: int | None = None) -> int | None:
    """Exposes ``count`` XLA CPU devices (default: one per usable core) so a zoo runs on every core.

    XLA runs the small batched matmuls of a population on few threads per device; giving each core
    a device and sharding the population axis over them is the fast way to train on a CPU. Call it
    before any JAX computation. It changes nothing, and returns None, when the device count was
    already chosen (``XLA_FLAGS=--xla_force_host_platform_device_count``, ``JAX_NUM_CPU_DEVICES``)
    or JAX has already started; otherwise it returns the count it set. Accelerators are unaffected.
    """
    import os

    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return None
    if jax.config.jax_num_cpu_devices != -1:
        return None
    count = count or len(os.sched_getaffinity(0))
    try:
        jax.config.update("jax_num_cpu_devices", int(count))
    except RuntimeError:  # backends already initialised
        return None
    return int(count)
