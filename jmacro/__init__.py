"""jmacro: scalable learning of macroscopic stochastic dynamics, in JAX."""

from jmacro._devices import configure_host_devices

# Before anything creates JAX's backends: one CPU device per core (see jmacro._devices).
configure_host_devices()

from jmacro import lattice, metrics, models, observables, rollout, systems, training  # noqa: E402
from jmacro.runs import Run, load_run  # noqa: E402
from jmacro.systems import CurieWeiss, GlauberIsing  # noqa: E402

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
