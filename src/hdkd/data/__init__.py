"""Data layer: discovering datasets, decoding them once into a cache, splits, transforms and Datasets."""

from hdkd.data.build import DataSplits, build_datasets, build_eval_dataset
from hdkd.data.datasets import CachedImageDataset
from hdkd.data.imageio import load_image, resize_image
from hdkd.data.synthetic import make_synthetic_dataset
from hdkd.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, mean_std, train_transform

__all__ = [
    "DataSplits",
    "build_datasets",
    "build_eval_dataset",
    "CachedImageDataset",
    "load_image",
    "resize_image",
    "make_synthetic_dataset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "eval_transform",
    "mean_std",
    "train_transform",
]
