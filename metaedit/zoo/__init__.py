"""Populations ("zoos") of networks of one architecture, trained together with ``jit(vmap(...))``.

* :mod:`metaedit.zoo.config`: :class:`ZooConfig` and the per-member :class:`Hparams` drawn from it;
* :mod:`metaedit.zoo.train`: one member's pure training functions and :func:`train_zoo`, which
  trains (or resumes, or loads) a whole zoo with a checkpoint after every chunk;
* :mod:`metaedit.zoo.store`: the trained :class:`Zoo`, its split of networks, saving and loading.
"""

from metaedit.zoo.config import Hparams, ZooConfig, ZooError, sample_hparams
from metaedit.zoo.store import (MIXED_MANIFEST, ZOO_FORMAT, Zoo, arch_folder, check_fits, load_zoo, load_zoos,
                                network_split, read_zoo_record, save_zoo, write_mixed_manifest, zoo_folders)
from metaedit.zoo.train import (ZooProgram, evaluate, init_member, member_key, optimizer, train_chunk, train_one,
                                train_zoo)

__all__ = ["Hparams", "ZooConfig", "ZooError", "sample_hparams", "ZOO_FORMAT", "Zoo", "check_fits", "load_zoo",
           "MIXED_MANIFEST", "arch_folder", "load_zoos", "write_mixed_manifest", "zoo_folders",
           "network_split", "read_zoo_record", "save_zoo", "ZooProgram", "evaluate", "init_member", "member_key",
           "optimizer", "train_chunk", "train_one", "train_zoo"]
