"""jmacro: scalable learning of macroscopic stochastic dynamics, in JAX."""

from jmacro import lattice, metrics, models, observables, rollout, systems, training
from jmacro.runs import Run, load_run
from jmacro.systems import CurieWeiss, GlauberIsing

__version__ = "0.1.0"

__all__ = [
    "CurieWeiss",
    "GlauberIsing",
    "Run",
    "__version__",
    "lattice",
    "load_run",
    "metrics",
    "models",
    "observables",
    "rollout",
    "systems",
    "training",
]
