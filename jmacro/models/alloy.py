"""The alloy's macroscopic latent: short-range order, with no learned closure.

``SROEncoder`` plays the closure autoencoder's part for the BCC alloy (its latents are closed,
so there is nothing to train and no decoder): the latent of one configuration
``(L, L, L, 2)`` is the first-shell SRO over the bonds inside its l^3-cell tiles
(``jmacro.observables.short_range_order_interior``), all six numbers (NbNb, NbMo, NbTa, MoMo,
MoTa, TaTa) or the three independent ones (NbMo, NbTa, MoTa): with equal species counts the
SRO matrix is symmetric with zero row sums up to the vacancy's few bonds
(``short_range_order``'s identities), so the diagonal follows from the off-diagonal numbers.

Its patch is the vacancy-centred window of partial evolution: after tiling upsampling every
tile holds one vacancy at its centre, so the window of l^3 cells centred on vacancy m is
exactly tile m (``BCCTiling3D(l)`` order, the vacancies' order). The pair of one partially
evolved window (``partial_pair``; the reference's formula), with phi the encoder and phi_loc
the window's own SRO (its intra-window bonds, no periodic wrap):

- ``"ours"``:     z_t = phi(x_t),  z~ = z_t + phi_loc(window after) - phi_loc(window before);
- ``"baseline"``: z_t = phi(x_t),  z~ = phi_loc(window after)  (the window as the system);
- ``"patch"``:    z_t = phi_loc(window before), z~ = phi_loc(window after).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray, Shaped

from jmacro._checks import check_positive_int
from jmacro.geometry import BCCTiling3D
from jmacro.observables import short_range_order_interior

SRO_COORDINATES = {"all": (0, 1, 2, 3, 4, 5), "independent": (1, 2, 4)}
"""Which of ``bcc.SRO_PAIRS``' six numbers form the latent."""
SRO_NAMES = ("NbNb", "NbMo", "NbTa", "MoMo", "MoTa", "TaTa")
"""Names of the six SRO numbers, in ``bcc.SRO_PAIRS`` order."""


class SROEncoder(eqx.Module):
    """z(x) = the intra-tile first-shell SRO of x, selected coordinates (module docstring).

    Attributes:
        num_cells: L, cells per side of a whole configuration (static).
        tile_cells: l, cells per side of a tile and of the partial-evolution window (static).
        coordinates: ``"all"`` (6) or ``"independent"`` (NbMo, NbTa, MoTa) (static).
    """

    num_cells: int = eqx.field(static=True)
    tile_cells: int = eqx.field(static=True)
    coordinates: str = eqx.field(static=True)

    def __check_init__(self):
        check_positive_int(self.num_cells, "num_cells")
        check_positive_int(self.tile_cells, "tile_cells")
        if self.num_cells % self.tile_cells:
            raise ValueError(
                f"tile_cells = {self.tile_cells} must divide num_cells = {self.num_cells}."
            )
        if self.coordinates not in SRO_COORDINATES:
            raise ValueError(
                f"coordinates must be one of {tuple(SRO_COORDINATES)}, got {self.coordinates!r}."
            )

    @property
    def config_shape(self) -> tuple[int, ...]:
        return (self.num_cells,) * 3 + (2,)

    @property
    def patch_shape(self) -> tuple[int, ...]:
        return (self.tile_cells,) * 3 + (2,)

    @property
    def num_patches(self) -> int:
        """K, the tiles (one vacancy each after upsampling)."""
        return (self.num_cells // self.tile_cells) ** 3

    @property
    def latent_dim(self) -> int:
        return len(SRO_COORDINATES[self.coordinates])

    @property
    def latent_names(self) -> tuple[str, ...]:
        return tuple(SRO_NAMES[i] for i in SRO_COORDINATES[self.coordinates])

    def _select(self, sro: Float[Array, "6"]) -> Float[Array, " d"]:
        return sro[jnp.asarray(SRO_COORDINATES[self.coordinates])]

    def encode(self, occupancy: Shaped[Array, "L L L 2"]) -> Float[Array, " d"]:
        """phi(x): the intra-tile SRO of a whole configuration ``(L, L, L, 2)``."""
        if occupancy.shape != self.config_shape:
            raise ValueError(
                f"expected one configuration of shape {self.config_shape}, got "
                f"{occupancy.shape}; use jax.vmap for batches."
            )
        return self._select(short_range_order_interior(occupancy, self.tile_cells))

    def encode_patch(self, window: Shaped[Array, "l l l 2"]) -> Float[Array, " d"]:
        """phi_loc: the SRO of a window ``(l, l, l, 2)`` over its own bonds (no wrap)."""
        if window.shape != self.patch_shape:
            raise ValueError(
                f"expected one window of shape {self.patch_shape}, got {window.shape}."
            )
        return self._select(short_range_order_interior(window, self.tile_cells))

    def partial_pair(
        self,
        snapshot: Shaped[Array, "L L L 2"],
        index: Int[Array, ""],
        evolved: Shaped[Array, "l l l 2"],
        method: str = "ours",
    ) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
        """(z_t, z~) of ``snapshot`` whose window (= tile) ``index`` became ``evolved``."""
        before = BCCTiling3D(self.tile_cells).extract(snapshot, index)
        after = self.encode_patch(evolved)
        if method == "patch":
            return self.encode_patch(before), after
        z = self.encode(snapshot)
        if method == "ours":
            return z, z + after - self.encode_patch(before)
        if method == "baseline":
            return z, after
        raise ValueError(f"unknown pair method {method!r}; use ours, baseline or patch.")


def make_sro_encoder(
    key: PRNGKeyArray | None, num_cells: int, tile_cells: int, coordinates: str = "all"
) -> SROEncoder:
    """An ``SROEncoder`` (``key`` is unused: nothing is random); JSON-friendly arguments."""
    del key
    return SROEncoder(num_cells, tile_cells, coordinates)


__all__ = ["SRO_COORDINATES", "SRO_NAMES", "SROEncoder", "make_sro_encoder"]
