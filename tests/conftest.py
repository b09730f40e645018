"""Test set-up: CPU only, a persistent compilation cache, shared tiny fixtures."""

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "1")  # one device unless a test asks for more
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "metaedit" / "jax-compilation-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # the two workers share every program
# The suite's programs are tiny and most of its time is compilation: the CPU backend's LLVM passes at
# level 0 compile about 30% faster (tests/certify/test_relaxation.py cold: 85 s -> 59 s). The
# programs are XLA's; the machine code is slower, and floating-point results may differ in the last
# bits from a default build (FMA contraction, reduction order), which no assertion depends on.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
# commands run in-process share the library tests' programs (a stored executable is compiled apart;
# tests/metaedit/test_executables.py covers that cache)
os.environ.setdefault("METAEDIT_COMPILATION_CACHE", "0")

import pytest  # noqa: E402

from metaedit import datasets  # noqa: E402


@pytest.fixture(scope="session")
def breast_cancer():
    return datasets.load_breast_cancer()


@pytest.fixture(scope="session")
def adult():
    return datasets.load_adult()


@pytest.fixture(scope="session")
def digits():
    return datasets.load_digits()
