"""Shared pieces of the model layer."""

from __future__ import annotations

import equinox as eqx


class AbstractNonTrainable(eqx.Module):
    """Marker base class: array leaves of a subclass are statistics, not parameters.

    The training loop (``jmacro.training.fit``) excludes every array inside an instance of
    this class from the gradient and the optimiser (weight decay included), but checkpoints
    serialise it with the rest of the model, so a reloaded model carries it along.
    """
