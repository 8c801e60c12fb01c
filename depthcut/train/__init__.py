"""SGD training / fine-tuning with optional distillation, evaluation, BatchNorm re-calibration."""
from .loop import batch_statistics, cosine_lr, distillation_loss, evaluate, recalibrate_bn, train

__all__ = ["batch_statistics", "cosine_lr", "distillation_loss", "evaluate", "recalibrate_bn", "train"]
