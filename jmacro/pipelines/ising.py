"""Ising: 2D Glauber dynamics at T = 2.5, h = 0.1; test error vs patch size (REFERENCE.md 2.2).

Latent (m, domain-wall density, 2 learned closure variables). Pairs: frozen-halo partial
evolution of 0.5 sweeps, two per snapshot. The reference's semantics are ``--pair-events True
--pairs.boundary periodic`` (isolated periodic patches, n-flip steps).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jmacro.pipelines._spins import AbstractSpinExperiment
from jmacro.pipelines.base import Pairs
from jmacro.systems import GlauberIsing

SMOKE = dict(
    large_size=16,
    patch_sizes=(8,),
    small=dict(num_trajectories=8, num_steps=4),
    upsampling=dict(
        num_large=32, num_random=8, num_unrelaxed=8, window=8, stride=4, schedule="parallel"
    ),
    autoencoder=dict(width=4, epochs=1, batch_size=32),
    sde=dict(epochs=2, batch_size=32),
    truth=dict(num_val_runs=2, val_steps=4, num_test_runs=4, test_steps=4, reference_steps=4),
    test_magnetisations=(-0.5, 0.5),
    num_seeds=2,
)
QUICK = dict(
    large_size=32,
    patch_sizes=(8, 16, 32),
    small=dict(num_trajectories=200, num_steps=40),
    upsampling=dict(
        num_large=3000,
        num_random=1000,
        num_unrelaxed=300,
        window=8,
        stride=4,
        schedule="parallel",
    ),
    autoencoder=dict(width=8, epochs=3, batch_size=128, max_snapshots=3000),
    sde=dict(epochs=40, batch_size=256),
    truth=dict(num_val_runs=8, val_steps=100, num_test_runs=20, test_steps=60, reference_steps=100),
)
# The reference sizes (L = 64, n_s = 8^2 ... 64^2) with data and epochs cut to fit a 2-core
# CPU in about half an hour per system.
REFERENCE_CPU = dict(
    QUICK,
    large_size=64,
    patch_sizes=(8, 16, 32, 64),
    upsampling=dict(QUICK["upsampling"], num_large=4000, num_random=2000, window=16, stride=8),
    autoencoder=dict(QUICK["autoencoder"], max_snapshots=4000),
    truth=dict(QUICK["truth"], test_steps=100, reference_steps=500),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Ising(AbstractSpinExperiment):
    """2D Ising model, continuous-time heat-bath Glauber dynamics (``GlauberIsing``)."""

    name: ClassVar[str] = "ising"
    system_class: ClassVar[type] = GlauberIsing
    relax_boundary: ClassVar[str] = "halo"  # LocalRelax windows see their frozen neighbours
    physical_dims: ClassVar[int] = 2
    known_observables: ClassVar[str] = "ising"
    # frozen halo (5x lower error at K = 16 than isolated periodic patches); 0.5 sweeps keeps
    # the drift and diffusion bias of a pair within 3 % at K <= 16 (docs/pair_bias.md); two
    # nearly uncorrelated patch evolutions per snapshot
    pairs: Pairs = Pairs(boundary="halo", duration=0.5, per_snapshot=2)
    latent_names: ClassVar[tuple[str, ...]] = (
        "magnetisation",
        "domain-wall density",
        "closure 1",
        "closure 2",
    )
    presets: ClassVar[dict] = {
        "smoke": SMOKE,
        "quick": QUICK,
        "reference-cpu": REFERENCE_CPU,
        "paper": {},
    }
