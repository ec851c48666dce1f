"""Scaling up: partial evolution, hierarchical upsampling and dataset storage.

The dataset builder lives in ``jmacro.scale.builder`` (not re-exported here: it imports
``jmacro.cache``, which itself imports this package's storage).
"""

from jmacro.scale.fields import (
    FieldLocalRelax,
    apply_field_patch,
    evolve_field_patch,
    field_local_relax,
    field_partial_pairs,
    field_patch_with_ghosts,
    upsample_field,
    upsample_fields,
)
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
from jmacro.scale.upsample import (
    HierarchicalUpsampling,
    LocalRelax,
    hierarchical_upsample,
    local_relax,
    upsample_dataset,
    upsample_spins,
)

__all__ = [
    "Dataset",
    "DatasetError",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "DatasetWriter",
    "FieldLocalRelax",
    "HierarchicalUpsampling",
    "LocalRelax",
    "PartialEvolution",
    "apply_field_patch",
    "apply_patch",
    "atomic_directory",
    "evolve_field_patch",
    "evolve_patch",
    "evolve_patches",
    "field_local_relax",
    "field_partial_pairs",
    "field_patch_with_ghosts",
    "hierarchical_upsample",
    "load_dataset",
    "local_relax",
    "save_dataset",
    "to_jsonable",
    "upsample_dataset",
    "upsample_field",
    "upsample_fields",
    "upsample_spins",
]
