"""metaedit: networks as data, populations of networks, and editors that make them compliant.

    import metaedit
    data = metaedit.load_dataset("adult")
    spec = metaedit.parse_arch("mlp:32,32", data.input_shape, data.num_classes)
    zoo = metaedit.train_zoo(spec, data, metaedit.ZooConfig(members=128), workdir="runs/zoo")
    editor = metaedit.train_editor(spec, zoo.subset("train"), data, metaedit.EditorTrainConfig("fairness"))
    rows = metaedit.evaluate_editor(editor, spec, metaedit.requirement("fairness"), zoo.subset("test"), data,
                                    lambdas=[0, 0.5, 1], target=0.05)

The names below are the entry points a user needs; each lives in one module (the module paths
stay importable). Attributes are imported on first use, so ``import metaedit`` is cheap.
"""

from __future__ import annotations

from metaedit.exports import lazy

__version__ = "0.1.0"

_EXPORTS = {
    "metaedit.datasets": ("Dataset", "DatasetError", "load_dataset", "load_csv", "load_source"),
    "metaedit.nets": ("MLPSpec", "CNNSpec", "SpecError", "parse_arch", "init", "apply", "save_params",
                      "load_params"),
    "metaedit.zoo": ("Zoo", "ZooConfig", "ZooError", "train_zoo", "load_zoo"),
    "metaedit.gmn": ("Editor", "EditorError", "edit", "edit_batch"),
    "metaedit.editor": ("EditorTrainConfig", "EditorTrainingError", "train_editor", "load_editor"),
    "metaedit.compare": ("evaluate_editor", "evaluate_baselines", "evaluate_group_shift",
                          "evaluate_imputation"),
    "metaedit.groupshift": ("GroupShifted", "GroupShiftError"),
    "metaedit.imputation": ("Imputed", "ImputationError"),
    "metaedit.requirements": ("Requirement", "RequirementError", "REQUIREMENTS"),
    "metaedit.certified": ("CertifiedEdit", "certified_edit"),
    "metaedit.quickstart": ("QuickstartConfig", "run_quickstart"),
}
_ALIASES = {"requirement": ("metaedit.requirements", "get"), "group_shift": ("metaedit.groupshift", "edit"),
            "impute": ("metaedit.imputation", "edit")}
__all__, __getattr__, __dir__ = lazy("metaedit", globals(), _EXPORTS, _ALIASES)
