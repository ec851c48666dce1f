"""Scaling up: partial evolution, hierarchical upsampling and dataset storage.

The dataset builder lives in ``jmacro.scale.builder`` (not re-exported here: it imports
``jmacro.cache``, which itself imports this package's storage).
"""

from jmacro.scale.partial import PartialEvolution, apply_patch, evolve_patch, evolve_patches
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
    "HierarchicalUpsampling",
    "LocalRelax",
    "PartialEvolution",
    "apply_patch",
    "atomic_directory",
    "evolve_patch",
    "evolve_patches",
    "hierarchical_upsample",
    "load_dataset",
    "local_relax",
    "save_dataset",
    "to_jsonable",
    "upsample_dataset",
    "upsample_spins",
]
