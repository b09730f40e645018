"""Continual learning: task sequences, the usual baselines, and safe updates inside certified LIDs.

* :mod:`certify.continual.tasks`: Split data sets in task-, domain- and class-incremental form,
  evaluation and accuracy-matrix summaries;
* :mod:`certify.continual.baselines`: naive, L2, EWC, SI, A-GEM and replay, vmapped over seeds;
* :mod:`certify.continual.safe`: every new task trained inside a certified LID of the old ones.
"""

from certify.continual.tasks import (SCENARIOS, ContinualError, TaskSequence, average_accuracy, evaluate, forgetting,
                                     split)

__all__ = ["SCENARIOS", "ContinualError", "TaskSequence", "average_accuracy", "evaluate", "forgetting", "split"]
