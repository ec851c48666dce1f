"""Scaling up: partial evolution and hierarchical upsampling.

Datasets on disk and the stage cache live in the infrastructure layer ``jmacro.io``. The
dataset builder lives in ``jmacro.scale.builder`` (not re-exported here: it drives the stage
cache, ``jmacro.io.cache``).
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
from jmacro.scale.upsample import (
    HierarchicalUpsampling,
    LocalRelax,
    hierarchical_upsample,
    local_relax,
    upsample_dataset,
    upsample_spins,
)

__all__ = [
    "FieldLocalRelax",
    "HierarchicalUpsampling",
    "LocalRelax",
    "PartialEvolution",
    "apply_field_patch",
    "apply_patch",
    "evolve_field_patch",
    "evolve_patch",
    "evolve_patches",
    "field_local_relax",
    "field_partial_pairs",
    "field_patch_with_ghosts",
    "hierarchical_upsample",
    "local_relax",
    "upsample_dataset",
    "upsample_field",
    "upsample_fields",
    "upsample_spins",
]
