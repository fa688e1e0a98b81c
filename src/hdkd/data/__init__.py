"""Data layer: discovering datasets, decoding them once into a cache, splits, transforms and Datasets."""
from .build import DataSplits, build_datasets, build_eval_dataset, resolve_num_workers
from .datasets import CachedImageDataset
from .imageio import load_image, resize_image
from .synthetic import make_synthetic_dataset
from .transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, mean_std, train_transform

__all__ = [
    "DataSplits", "build_datasets", "build_eval_dataset", "resolve_num_workers", "CachedImageDataset",
    "load_image", "resize_image", "make_synthetic_dataset", "IMAGENET_MEAN", "IMAGENET_STD", "eval_transform",
    "mean_std", "train_transform",
]
