"""The chunked driver of long runs: a progress bar, a metrics log, a checkpoint per chunk, resume.

A long run (a zoo, an editor) is a jitted ``advance(state) -> (state, metrics)`` that runs one
chunk of steps under ``lax.scan``. :func:`run_chunks` calls it from the host chunk after chunk;
between chunks it updates a progress bar, appends the chunk's mean metrics to
``<workdir>/metrics.jsonl`` and writes an orbax checkpoint whose record holds the run's identity.
:func:`resume_point` finds where an interrupted run with the same identity stopped; a run resumed
from there ends identical to an uninterrupted one, as every chunk is a pure function of the state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

from metaedit import checkpoint


def resume_point(workdir: str | Path | None, identity: dict) -> tuple[int, dict] | None:
    """``(step, record)`` of the newest checkpoint in ``workdir``, or None where there is none.

    Raises :class:`metaedit.checkpoint.CheckpointError` naming every differing setting when the
    checkpoint belongs to another run (its record does not match ``identity``).
    """
    if workdir is None or not checkpoint.steps(workdir):
        return None
    step, record = checkpoint.read_record(workdir)
    checkpoint.check_record(record, identity, f"{workdir} step {step}")
    return step, record


def summarise(metrics: Any) -> dict[str, float]:
    """The mean of every metric over a chunk's steps (NaN entries, e.g. masked steps, left out)."""
    out = {}
    for name, values in dict(metrics).items():
        values = np.asarray(values, np.float64)
        if np.isfinite(values).any():
            out[name] = float(np.nanmean(values))
    return out


def run_chunks(advance: Callable[[Any], tuple[Any, Any]], state: Any, *, chunks: int, chunk_steps: int,
               desc: str, start: int = 0, progress: bool = True, workdir: str | Path | None = None,
               record: dict | None = None, save_tree: Callable[[Any], Any] = lambda state: state,
               save_last: bool = True, stop_after_chunks: int | None = None) -> tuple[Any, bool]:
    """Runs chunks ``start .. chunks - 1`` of ``advance``; returns ``(state, finished)``.

    With ``workdir``: after chunk k (1-based) ``save_tree(state)`` is saved as checkpoint k with
    ``record`` plus ``chunks_done``, ``chunks`` and ``complete``, except after the last chunk when
    ``save_last`` is False (the caller saves its finished result itself); each chunk's mean metrics
    go to ``metrics.jsonl``. ``stop_after_chunks`` stops after that many chunks of this call
    (finished False): a controlled interruption, for tests.
    """
    bar = tqdm(total=chunks * chunk_steps, initial=start * chunk_steps, desc=desc, unit="step",
               disable=not progress)
    try:
        for chunk in range(start, chunks):
            state, metrics = advance(state)
            done = chunk + 1
            summary = summarise(metrics)
            if workdir is not None:
                if done < chunks or save_last:
                    checkpoint.save(workdir, done, save_tree(state),
                                    {**(record or {}), "chunks_done": done, "chunks": chunks,
                                     "complete": done == chunks})
                Path(workdir).mkdir(parents=True, exist_ok=True)
                with open(Path(workdir) / "metrics.jsonl", "a") as log:
                    log.write(json.dumps({"step": done * chunk_steps, **summary}) + "\n")
            bar.update(chunk_steps)
            bar.set_postfix({k: f"{v:.4g}" for k, v in summary.items()})
            if stop_after_chunks is not None and done - start >= stop_after_chunks and done < chunks:
                return state, False
    finally:
        bar.close()
    return state, True
