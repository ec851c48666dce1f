"""Scaling up: partial evolution, hierarchical upsampling, dataset building and storage."""

from jmacro.scale.builder import SpinDatasetConfig, build_spin_datasets, small_trajectories
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
    "SpinDatasetConfig",
    "apply_patch",
    "atomic_directory",
    "build_spin_datasets",
    "evolve_patch",
    "evolve_patches",
    "hierarchical_upsample",
    "load_dataset",
    "local_relax",
    "save_dataset",
    "small_trajectories",
    "to_jsonable",
    "upsample_dataset",
    "upsample_spins",
]
