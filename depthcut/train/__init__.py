"""SGD training / fine-tuning with optional distillation, evaluation, BatchNorm re-calibration."""
from .loop import cosine_lr, distillation_loss, evaluate, recalibrate_bn, train

__all__ = ["cosine_lr", "distillation_loss", "evaluate", "recalibrate_bn", "train"]
