"""Image data: one in-memory representation (uint8 NCHW tensor, int64 labels, class names)."""

from .imageset import ImageSet
from .loaders import load_dataset, load_splits, bundled_path
from .writer import save_imagefolder

__all__ = ["ImageSet", "load_dataset", "load_splits", "bundled_path", "save_imagefolder"]
