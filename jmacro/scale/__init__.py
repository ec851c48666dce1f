"""Scaling up: partial evolution and hierarchical upsampling, for every system.

Written once over the system contract (``jmacro.systems.AbstractSystem``) and the tilings and
boundary objects of ``jmacro.geometry``: a spin caller and a field caller differ only in the
tiling, the boundary and the upsampler they pass.

Datasets on disk and the stage cache live in the infrastructure layer ``jmacro.io``. The
dataset builder lives in ``jmacro.scale.builder`` (not re-exported here: it drives the stage
cache, ``jmacro.io.cache``).
"""

from jmacro.scale.partial import (
    PartialEvolution,
    PatchEvolution,
    advance_patch,
    apply_patch,
    evolve_patch,
    evolve_patches,
)
from jmacro.scale.upsample import (
    BlockReplication,
    HierarchicalUpsampling,
    Interpolation,
    LocalRelax,
    hierarchical_upsample,
    local_relax,
    random_magnetisation,
    upsample_dataset,
    upsample_field,
    upsample_spins,
)

__all__ = [
    "BlockReplication",
    "HierarchicalUpsampling",
    "Interpolation",
    "LocalRelax",
    "PartialEvolution",
    "PatchEvolution",
    "advance_patch",
    "apply_patch",
    "evolve_patch",
    "evolve_patches",
    "hierarchical_upsample",
    "local_relax",
    "random_magnetisation",
    "upsample_dataset",
    "upsample_field",
    "upsample_spins",
]
