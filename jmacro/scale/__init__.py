"""Scaling up: dataset building and storage (partial evolution and upsampling to come)."""

from jmacro.scale.storage import (
    Dataset,
    DatasetError,
    DatasetExistsError,
    DatasetNotFoundError,
    DatasetWriter,
    atomic_directory,
    load_dataset,
    save_dataset,
    to_jsonable,
)

__all__ = [
    "Dataset",
    "DatasetError",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "DatasetWriter",
    "atomic_directory",
    "load_dataset",
    "save_dataset",
    "to_jsonable",
]
