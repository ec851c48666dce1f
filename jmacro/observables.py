"""Macroscopic observables as free functions of ONE state (a full lattice or a patch).

All are spatial means, hence patch-additive on a tiling when the patch version is used
consistently. Batch with ``jax.vmap``. Periodic boundaries are assumed: on a patch, the bonds
that wrap around the patch are counted as if the patch were a small periodic system (the
reference's convention for the known part of the closure encoder).
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float, Shaped


def magnetisation(spins: Shaped[Array, "H W"]) -> Float[Array, ""]:
    """m = (1/n) sum_i s_i."""
    return jnp.mean(spins.astype(jnp.float32))


def _bond_products(spins: Shaped[Array, "H W"]) -> tuple[Array, Array]:
    s = spins.astype(jnp.float32)
    return s * jnp.roll(s, -1, axis=0), s * jnp.roll(s, -1, axis=1)


def domain_wall_density(spins: Shaped[Array, "H W"]) -> Float[Array, ""]:
    """Mean over the 2n periodic nearest-neighbour bonds of (1 - s_i s_j) / 2, in [0, 1]."""
    vertical, horizontal = _bond_products(spins)
    return 0.5 * (1.0 - 0.5 * (jnp.mean(vertical) + jnp.mean(horizontal)))


def ising_energy_per_site(
    spins: Shaped[Array, "H W"], coupling: float | Array = 1.0, field: float | Array = 0.0
) -> Float[Array, ""]:
    """E / n with E = -J sum_<ij> s_i s_j - h sum_i s_i on a periodic lattice (2n bonds)."""
    vertical, horizontal = _bond_products(spins)
    return -coupling * jnp.mean(vertical + horizontal) - field * magnetisation(spins)


def curie_weiss_energy_per_site(
    spins: Shaped[Array, "H W"], coupling: float | Array = 1.0, field: float | Array = 0.0
) -> Float[Array, ""]:
    """E / N = -(J m^2 / 2 + h m) for the mean-field model."""
    m = magnetisation(spins)
    return -(0.5 * coupling * m**2 + field * m)
