"""Microscopic simulators: pure JAX, one configuration per call, no ML imports."""

from jmacro.systems.base import AbstractSpinSystem
from jmacro.systems.curie_weiss import (
    CurieWeiss,
    mean_field_diffusion_sq,
    mean_field_drift,
    mean_field_magnetisation,
)
from jmacro.systems.ising import (
    CRITICAL_TEMPERATURE,
    GlauberIsing,
    onsager_energy_per_site,
    random_spins,
)

__all__ = [
    "CRITICAL_TEMPERATURE",
    "AbstractSpinSystem",
    "CurieWeiss",
    "GlauberIsing",
    "mean_field_diffusion_sq",
    "mean_field_drift",
    "mean_field_magnetisation",
    "onsager_energy_per_site",
    "random_spins",
]
