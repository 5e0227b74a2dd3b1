"""Datasets: registered sources (IDX, CIFAR archives), your own folders and arrays, in-memory
tensors [N, C, H, W], normalised batches and batched augmentations."""
from .batches import Images, batch_indices, normalize, rows
from .datasets import Dataset, describe_registered, fetch_registered, list_datasets, load_dataset
from .idx import encode_idx, parse_idx
from .sources import default_root, fetch, provenance

__all__ = ["Dataset", "Images", "batch_indices", "default_root", "describe_registered",
           "encode_idx", "fetch", "fetch_registered", "list_datasets", "load_dataset",
           "normalize", "parse_idx", "provenance", "rows"]
