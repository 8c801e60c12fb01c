"""Data sets (built-in names and image folders), held-out splits for importance scoring, fast batching."""
from .datasets import (BUILTIN, DataSplits, TensorLoader, dataset_info, load_dataset, loader, make_splits,
                       random_crop_flip)

__all__ = ["BUILTIN", "DataSplits", "TensorLoader", "dataset_info", "load_dataset", "loader", "make_splits",
           "random_crop_flip"]
