"""A trained zoo: the container, its split of networks, and saving / loading it."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import numpy as np

from metaedit import checkpoint, nets, options
from metaedit.datasets import Dataset
from metaedit.zoo.config import HPARAM_DTYPES, Hparams, ZooConfig, ZooError

ZOO_FORMAT = "metaedit-zoo/1"
MIXED_MANIFEST = "mixed.json"
"""A mixed zoo is a directory of zoos, one per architecture, listed in this file."""


@dataclasses.dataclass(frozen=True, eq=False)
class Zoo:
    """A trained population: stacked params [P, ...] of one ``spec``, with hparams, metrics, split.

    metrics: ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``, each [P].
    split: ``train``/``val``/``test`` member indices (a split of the *networks*).
    dataset: the data set's ``source`` record (see :func:`metaedit.datasets.load_source`).
    """

    spec: nets.Spec
    params: nets.Params
    hparams: Hparams
    metrics: dict[str, np.ndarray]
    split: dict[str, np.ndarray]
    config: ZooConfig
    dataset: dict

    @property
    def members(self) -> int:
        return self.config.members

    def member(self, index: int) -> nets.Params:
        """Params of one member."""
        return jax.tree.map(lambda leaf: leaf[index], self.params)

    def subset(self, split: str) -> nets.Params:
        """Stacked params of the members in ``split`` ("train", "val" or "test")."""
        if split not in self.split:
            raise ZooError(f"unknown network split {split!r}; use train, val or test")
        return jax.tree.map(lambda leaf: leaf[self.split[split]], self.params)


def network_split(config: ZooConfig) -> dict[str, np.ndarray]:
    """A seeded split of member indices into train/val/test (all train when fewer than 3 members)."""
    p = config.members
    order = np.random.default_rng([config.seed, 2]).permutation(p)
    if p < 3:
        sizes = (p, 0, 0)
    else:
        n_val = max(1, round(config.network_split[1] * p))
        n_test = max(1, round(config.network_split[2] * p))
        sizes = (p - n_val - n_test, n_val, n_test)
    bounds = np.cumsum((0,) + sizes)
    return {
        name: np.sort(order[bounds[i]:bounds[i + 1]]).astype(np.int64)
        for i, name in enumerate(("train", "val", "test"))
    }


def check_fits(spec: nets.Spec, dataset: Dataset) -> None:
    """Raises :class:`ZooError` unless ``spec`` takes the data set's inputs and classes."""
    nets.check_fits(spec, dataset.input_shape, dataset.num_classes, f"data set {dataset.name}", ZooError)


def identity(spec: nets.Spec, config: ZooConfig, source: dict) -> dict:
    """The identity of a zoo run: a checkpoint is resumed only if all of this matches."""
    return {
        "format": ZOO_FORMAT,
        "spec": nets.spec_to_dict(spec),
        "config": options.to_dict(config),
        "dataset": source,
    }


def save_zoo(workdir: str | Path, zoo: Zoo, step: int, extra: dict | None = None) -> None:
    """Saves a finished zoo (params, hparams, metrics, network split) as checkpoint ``step``."""
    record = {
        **identity(zoo.spec, zoo.config, zoo.dataset),
        "complete": True,
        "members": zoo.members,
        "metrics": {k: np.asarray(v).tolist() for k, v in zoo.metrics.items()},
        "split": {k: v.tolist() for k, v in zoo.split.items()},
        **(extra or {}),
    }
    checkpoint.save(workdir, step, {"params": zoo.params, "hparams": zoo.hparams}, record)


def read_zoo_record(workdir: str | Path) -> dict:
    """The newest record of a zoo directory (no arrays read); refuses other directories."""
    _, record = checkpoint.read_record(workdir)
    if record.get("format") != ZOO_FORMAT:
        raise checkpoint.CheckpointError(f"{workdir} does not hold a metaedit zoo")
    return record


def load_zoo(workdir: str | Path) -> Zoo:
    """Loads the finished zoo saved in ``workdir`` (params as host numpy arrays)."""
    record = read_zoo_record(workdir)
    if not record.get("complete"):
        raise ZooError(
            f"the zoo in {workdir} is unfinished ({record.get('chunks_done')} of "
            f"{record.get('chunks')} chunks); run the same 'metaedit zoo' command again to resume"
        )
    spec = nets.spec_from_dict(record["spec"])
    config = options.from_dict(ZooConfig, record["config"])
    members = config.members
    hp_abstract = Hparams(*(jax.ShapeDtypeStruct((members,), d) for d in HPARAM_DTYPES))
    params_abstract = jax.eval_shape(
        lambda: jax.vmap(lambda k: nets.init(spec, k))(jax.random.split(jax.random.key(0), members)))
    tree, record = checkpoint.restore(workdir, {"params": params_abstract, "hparams": hp_abstract})
    to_host = functools.partial(jax.tree.map, np.asarray)
    return Zoo(
        spec=spec, params=to_host(tree["params"]), hparams=Hparams(*to_host(tuple(tree["hparams"]))),
        metrics={k: np.asarray(v, np.float32) for k, v in record["metrics"].items()},
        split={k: np.asarray(v, np.int64) for k, v in record["split"].items()},
        config=config, dataset=record["dataset"],
    )



def arch_folder(arch: str) -> str:
    """The sub-folder of a mixed zoo that holds architecture ``arch`` (e.g. ``mlp_32_32``)."""
    return arch.replace(":", "_").replace(",", "_")


def write_mixed_manifest(workdir: str | Path, archs: list[str]) -> None:
    """Records that ``workdir`` is a mixed zoo with one sub-zoo per architecture of ``archs``."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    (Path(workdir) / MIXED_MANIFEST).write_text(json.dumps({"format": "metaedit-mixed-zoo/1", "archs": archs,
                                                           "folders": [arch_folder(a) for a in archs]}))


def zoo_folders(workdir: str | Path) -> list[Path]:
    """The zoo directories of ``workdir``: its sub-zoos if it is a mixed zoo, else itself."""
    manifest = Path(workdir) / MIXED_MANIFEST
    if not manifest.is_file():
        return [Path(workdir)]
    try:
        folders = json.loads(manifest.read_text())["folders"]
    except (ValueError, KeyError, TypeError) as error:
        raise checkpoint.CheckpointError(f"{manifest} is not a readable mixed-zoo manifest ({error})") from None
    return [Path(workdir) / f for f in folders]


def load_zoos(workdir: str | Path) -> list[Zoo]:
    """Every zoo of ``workdir`` (one per architecture of a mixed zoo; else the one zoo). Their data
    sets must agree."""
    zoos = [load_zoo(folder) for folder in zoo_folders(workdir)]
    if any(z.dataset != zoos[0].dataset for z in zoos):
        raise ZooError(f"the zoos of {workdir} were trained on different data sets")
    return zoos
