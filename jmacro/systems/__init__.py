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
from jmacro.systems.predator_prey import (
    PredatorPrey,
    SimulationBlowUpError,
    euler_maruyama_step,
    heun_step,
    simulate_ensemble,
)
from jmacro.systems.predator_prey import initial_condition as predator_prey_initial_condition

__all__ = [
    "CRITICAL_TEMPERATURE",
    "AbstractSpinSystem",
    "CurieWeiss",
    "GlauberIsing",
    "PredatorPrey",
    "SimulationBlowUpError",
    "euler_maruyama_step",
    "heun_step",
    "mean_field_diffusion_sq",
    "mean_field_drift",
    "mean_field_magnetisation",
    "onsager_energy_per_site",
    "predator_prey_initial_condition",
    "random_spins",
    "simulate_ensemble",
]
