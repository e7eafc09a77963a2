"""Training and evaluation: the trainer, optimizers and schedules, checkpoints, metrics."""

from .evaluator import evaluate_source
from .metrics import Tally, evaluate
from .trainer import TrainingError, train

__all__ = ["Tally", "TrainingError", "evaluate", "evaluate_source", "train"]
