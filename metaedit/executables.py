"""Compiled programs kept on disk, so that a second command-line call neither traces, lowers nor compiles.

JAX's persistent compilation cache skips XLA compilation only: every new process still traces each
jitted Python function and lowers it to StableHLO before it finds the cached executable. On a
``metaedit lid`` call that is about 0.8 s of 4 s. :func:`jit` is ``jax.jit`` plus a second cache:
when it is turned on (:func:`enable`; the command line does it), the executable compiled for one set
of static arguments and argument shapes is serialised (``jax.experimental.serialize_executable``) into
a file named by a digest of everything that shapes it:

- the function's module and name, and the digest of the source of this project's packages (so an
  edited file is never served an old program);
- the static arguments (their ``repr``), the argument tree and every leaf's shape, dtype and weak type;
- jax's and jaxlib's versions, the backend and its device kind, and the x64 flag.

A later process loads it and runs it with no tracing at all. Calls under a trace (inside another
jitted or vmapped function), with arguments on other or several devices, or with the cache off go
through plain ``jax.jit``. A file that cannot be read is ignored and written again; at most
:data:`KEEP` files are kept. The files are executables and pickles: like JAX's own cache, the
directory must be the user's own (it is loaded without further checks).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import pickle
from pathlib import Path
from typing import Any, Callable

import jax

from metaedit import diskcache
from metaedit.diskcache import source_digest

_LOADED: dict[str, Any] = {}
_CACHE = diskcache.Switch(on_disable=_LOADED.clear)
enable, disable, directory = _CACHE.enable, _CACHE.disable, _CACHE.directory
"""``enable(directory)`` keeps compiled programs there; ``disable()`` turns that off and forgets the
programs loaded so far (plain ``jax.jit`` again); ``directory()`` says where they are kept (None: off)."""


@functools.cache
def _platform() -> str:
    import jaxlib

    device = jax.devices()[0]
    return f"{jax.__version__}|{jaxlib.__version__}|{device.platform}|{device.device_kind}|{len(jax.devices())}"


def _leaf_signature(leaf: Any) -> str:
    return str(jax.typeof(leaf))  # shape, dtype and weak type ("~float32[]"), as the executable expects


_TRACER = getattr(jax.core, "Tracer", None) or __import__("jax._src.core", fromlist=["Tracer"]).Tracer


class CachedJit:
    """``jax.jit(fn, static_argnames=...)`` whose executables are also kept on disk (see the module)."""

    def __init__(self, fn: Callable, static_argnames: tuple[str, ...] = ()):
        self.fn = fn
        self.static_argnames = tuple(static_argnames)
        self.jitted = jax.jit(fn, static_argnames=self.static_argnames)
        self.signature = inspect.signature(fn)
        self._stored_jit, self._stored_tag = None, None
        functools.update_wrapper(self, fn)

    def _compiling_jit(self) -> Any:
        """``jax.jit`` of ``fn`` renamed ``<name>_<source digest>``, used only to compile programs for
        the disk (:func:`_compile_afresh`): JAX's persistent cache, where a program of the plain name
        may already be, has none of this name, so this process compiles it afresh."""
        tag = source_digest()[:12]
        if self._stored_tag != tag:
            @functools.wraps(self.fn)
            def renamed(*args, **kwargs):
                return self.fn(*args, **kwargs)

            renamed.__name__ = renamed.__qualname__ = f"{self.fn.__name__}_{tag}"
            self._stored_jit, self._stored_tag = jax.jit(renamed, static_argnames=self.static_argnames), tag
        return self._stored_jit

    def __call__(self, *args, **kwargs):
        if _CACHE.path is None:  # jax.jit's own fast dispatch, called as it was
            return self.jitted(*args, **kwargs)
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        dynamic = {k: v for k, v in arguments.items() if k not in self.static_argnames}
        leaves = jax.tree.leaves(dynamic)
        default = jax.devices()[0]
        if any(isinstance(leaf, _TRACER) for leaf in leaves) or any(
                leaf.devices() != {default} for leaf in leaves if isinstance(leaf, jax.Array)):
            return self.jitted(**arguments)  # under a trace, or placed on other devices
        key = self._key(arguments, dynamic, leaves)
        if key is None:
            return self.jitted(**arguments)
        compiled = _LOADED.get(key)
        if compiled is None:
            compiled = _load(key)
        if compiled is None:
            compiled, fresh = _compile_afresh(self._compiling_jit().lower(**arguments))
            if fresh:
                _save(key, compiled)
        _LOADED[key] = compiled
        return compiled(**dynamic)

    def _key(self, arguments: dict, dynamic: dict, leaves: list) -> str | None:
        """The file name for these arguments; None when a static argument has no stable ``repr``."""
        static = repr(sorted((k, arguments[k]) for k in self.static_argnames if k in arguments))
        if " at 0x" in static:
            return None
        tree = str(jax.tree.structure(dynamic))
        if " at 0x" in tree:
            return None
        parts = [self.fn.__module__, self.fn.__qualname__, source_digest(), _platform(),
                 str(jax.config.jax_enable_x64), static, tree,
                 ",".join(map(_leaf_signature, leaves))]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:40]


_PERSISTENT_HITS = [0]


def _count_persistent_hit(event: str, **_) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _PERSISTENT_HITS[0] += 1


jax.monitoring.register_event_listener(_count_persistent_hit)


def _compile_afresh(lowered: Any) -> tuple[Any, bool]:
    """(compiled, fresh): ``lowered`` compiled, and whether it was compiled rather than loaded from
    JAX's persistent cache. An executable JAX loaded from its own cache serialises without the
    kernels it calls (a later process fails with "Function ... not found"), so only a fresh one may
    be written. JAX does not put these programs in its own cache (its minimum compile time is raised
    meanwhile): they live here, and a lost file is compiled afresh again."""
    hits, floor = _PERSISTENT_HITS[0], jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1e9)
    try:
        compiled = lowered.compile()
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", floor)
    return compiled, _PERSISTENT_HITS[0] == hits


def jit(fn: Callable | None = None, *, static_argnames: tuple[str, ...] | str = ()) -> Any:
    """:class:`CachedJit` of ``fn``; usable as ``@jit`` or ``@jit(static_argnames=(...))``."""
    names = (static_argnames,) if isinstance(static_argnames, str) else tuple(static_argnames)
    if fn is None:
        return lambda f: CachedJit(f, names)
    return CachedJit(fn, names)


def _load(key: str) -> Any:
    from jax.experimental import serialize_executable

    path = _CACHE.path / f"{key}.bin"
    if not path.exists():
        return None
    try:
        payload, in_tree, out_tree = pickle.loads(path.read_bytes())
        return serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
    except Exception:  # a damaged or foreign file: compile again and overwrite it
        return None


def _save(key: str, compiled: Any) -> None:
    from jax.experimental import serialize_executable

    try:
        blob = pickle.dumps(serialize_executable.serialize(compiled))
        diskcache.write_atomically(_CACHE.path / f"{key}.bin", blob)
        _prune(_CACHE.path)
    except Exception:  # an executable this backend cannot serialise, or a read-only cache: keep it in memory
        pass


KEEP = 256
"""The most programs a cache directory keeps: the oldest written go first (programs of an edited
source are never read again)."""


def _prune(directory: Path) -> None:
    files = sorted(directory.glob("*.bin"), key=lambda path: path.stat().st_mtime)
    for path in files[:max(0, len(files) - KEEP)]:
        path.unlink(missing_ok=True)
