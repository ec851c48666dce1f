"""One XLA CPU device per available core, unless the user has configured devices.

XLA exposes a single CPU device by default, so a batched simulation (``sharded_vmap``, the
LocalRelax and partial-evolution drivers) would run on one core. Importing jmacro therefore
adds ``--xla_force_host_platform_device_count=<cores>`` to ``XLA_FLAGS`` before JAX creates
its backends, and the batch axis is then split over the host's cores (``jmacro.sharding``).

Not applied when:
- ``XLA_FLAGS`` already sets the host device count (the user's choice wins);
- ``JMACRO_CPU_DEVICES`` is set: its value (a positive integer) is used instead, ``1`` keeps
  XLA's single CPU device;
- JAX's backends already exist (jax computed something before jmacro was imported): the flag
  can no longer take effect, and jmacro says so once in a warning-free debug log line.

GPUs are unaffected (the flag concerns the host platform only).
"""

from __future__ import annotations

import logging
import os

_FLAG = "--xla_force_host_platform_device_count"
_logger = logging.getLogger(__name__)


def available_cores() -> int:
    """Cores this process may run on (the CPU affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _backends_initialised() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - a jax without the private module
        return False
    return bool(getattr(xla_bridge, "_backends", None))


def configure_host_devices() -> int | None:
    """Add the host device count to ``XLA_FLAGS`` (see the module docstring).

    Returns the device count set, or None where nothing was changed.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if _FLAG.lstrip("-") in flags:
        return None
    requested = os.environ.get("JMACRO_CPU_DEVICES")
    if requested is not None:
        if not requested.isdigit() or int(requested) < 1:
            raise ValueError(f"JMACRO_CPU_DEVICES must be a positive integer, got {requested!r}.")
        count = int(requested)
    else:
        count = available_cores()
    if count == 1:
        return None
    if _backends_initialised():
        _logger.debug("JAX backends already exist: keeping XLA's CPU device count.")
        return None
    os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}={count}".strip()
    return count
