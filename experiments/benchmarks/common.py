"""Shared pieces of the benchmarks: JSON-line output, timing, and the machine's dense-matmul speed."""

from __future__ import annotations

import json
import platform
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp


def emit(benchmark: str, impl: str, value: float, unit: str, **sizes) -> dict:
    """Prints one measurement as a JSON line (keys as in DESIGN.md section 5) and returns it."""
    line = {"benchmark": benchmark, "impl": impl, "value": value, "unit": unit, **sizes}
    print(json.dumps(line), flush=True)
    return line


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` wall-clock timings of ``run()`` (which must block until done)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def machine() -> dict:
    """Where the numbers were taken."""
    device = jax.devices()[0]
    return {"platform": device.platform, "device_kind": device.device_kind, "devices": jax.device_count(),
            "cpu": platform.processor() or platform.machine(), "python": sys.version.split()[0],
            "jax": jax.__version__}


def jax_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """float32 [n, n] @ [n, n] GFLOP/s in JAX on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    return 2 * n**3 / best_seconds(lambda: matmul(a).block_until_ready(), repeats) / 1e9


def torch_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """float32 [n, n] @ [n, n] GFLOP/s in PyTorch on the CPU."""
    import torch

    a = torch.randn(n, n)
    a @ a
    return 2 * n**3 / best_seconds(lambda: a @ a, repeats) / 1e9
