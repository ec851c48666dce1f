"""Microscopic simulators: pure JAX, one configuration per call, no ML imports.

The contract (``AbstractSystem``) and its two families: heat-bath spins
(``AbstractHeatBathSpins``: ``GlauberIsing``, ``CurieWeiss``) and explicitly stepped SPDEs
(``AbstractSPDE``: ``PredatorPrey``), and the vacancy-exchange KMC of a BCC alloy
(``VacancyKMC`` with a barrier model ``NNKBarrier`` / ``KRABarrier``). Host drivers over
many trajectories are in ``jmacro.simulate``; partial evolution and LocalRelax in ``jmacro.scale``.
"""

from jmacro.systems._base import AbstractSystem, SimulationBlowUpError
from jmacro.systems._spde import AbstractSPDE, euler_maruyama_step, heun_step
from jmacro.systems._spins import AbstractHeatBathSpins, random_spins
from jmacro.systems.alloy_kmc import (
    AlloyState,
    VacancyKMC,
    alloy_state,
    state_from_voxels,
    state_to_voxels,
)
from jmacro.systems.barriers import AbstractBarrierModel, KRABarrier, NNKBarrier
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
)
from jmacro.systems.predator_prey import PredatorPrey
from jmacro.systems.predator_prey import initial_condition as predator_prey_initial_condition

__all__ = [
    "CRITICAL_TEMPERATURE",
    "AbstractBarrierModel",
    "AbstractHeatBathSpins",
    "AbstractSPDE",
    "AbstractSystem",
    "AlloyState",
    "CurieWeiss",
    "GlauberIsing",
    "KRABarrier",
    "NNKBarrier",
    "PredatorPrey",
    "SimulationBlowUpError",
    "VacancyKMC",
    "alloy_state",
    "euler_maruyama_step",
    "heun_step",
    "mean_field_diffusion_sq",
    "mean_field_drift",
    "mean_field_magnetisation",
    "onsager_energy_per_site",
    "predator_prey_initial_condition",
    "random_spins",
    "state_from_voxels",
    "state_to_voxels",
]
