"""Datasets: IDX format, verified sources, in-memory tensors and batches."""
from .datasets import Dataset, batch_indices, list_datasets, load_dataset, normalize
from .idx import encode_idx, parse_idx
from .sources import default_root, fetch, provenance

__all__ = ["Dataset", "batch_indices", "default_root", "encode_idx", "fetch", "list_datasets",
           "load_dataset", "normalize", "parse_idx", "provenance"]
