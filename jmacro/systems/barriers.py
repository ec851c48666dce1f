"""Migration barriers of a vacancy's 8 first-neighbour exchanges on a BCC alloy (eV).

A barrier model maps (occupancy, vacancy voxel) to the 8 barriers E_b[k] (eV) of the exchanges
of the vacancy with the atom at ``vacancy + bcc.FIRST_SHELL[k]`` (direction order ---, --+, ...,
+++). Entries for a neighbour that is itself a vacancy are meaningless (the KMC never uses
them). ``influence_sq`` bounds what a model reads: the barriers of a vacancy at v depend only on
sites u with minimum-image |u - v|^2 <= influence_sq (voxel units^2), so the KMC recomputes
only the barriers of vacancies that close to an exchange.

Models:
- ``NNKBarrier``: the NNK network (Xing et al., Nat. Commun. 15, 3879 (2024)) from its weights
  file, BatchNorm folded and the input pruned to the 112 sites that can be non-zero (exact).
- ``KRABarrier``: kinetically resolved activation, E_b = E0[A] + (E_final - E_initial) / 2 with
  first- and second-shell pair interactions; detailed balance holds by construction. Its
  shipped NbMoTa parameters (``KRABarrier.nbmota()``) were fitted by ``experiments/fit_kra.py``.
"""

from __future__ import annotations

import abc
import itertools
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, Shaped

from jmacro import bcc
from jmacro.systems import _kra_nbmota


class AbstractBarrierModel(eqx.Module):
    """Barriers (eV) of the 8 exchanges of one vacancy; see the module docstring."""

    @abc.abstractmethod
    def barriers(
        self, occupancy: Shaped[Array, "L L L 2"], vacancy: Int[Array, "3"]
    ) -> Float[Array, "8"]:
        """E_b[k], eV, for the vacancy at voxel ``vacancy`` exchanging with direction k."""

    @property
    @abc.abstractmethod
    def influence_sq(self) -> int:
        """Largest |u - v|^2 (voxels^2) of a site u that the barriers of a vacancy at v read."""


# ------------------------------------------------------------------------------ NNK network
NNK_VOXEL = 1.62  # Angstrom: a / 2 with a = 3.24 Angstrom, the reference's lattice constant
NNK_CUTOFF = 7.5  # Angstrom: inputs farther from the vacancy are zeroed by the reference
NNK_CROP = 9  # the reference's crop side (voxels), centred on the vacancy
NNK_BN_EPS = 1e-5


def _nnk_live_offsets() -> np.ndarray:
    """(112, 3): the crop offsets that can hold an atom (sites within the cutoff, not the
    centre), in the C order (x, y, z) of the flattened crop."""
    half = NNK_CROP // 2
    grid = np.stack(np.meshgrid(*[np.arange(-half, half + 1)] * 3, indexing="ij"), -1)
    offsets = grid.reshape(-1, 3)
    same_parity = np.all(offsets % 2 == offsets[:, :1] % 2, axis=1)
    within = (offsets**2).sum(1) * NNK_VOXEL**2 <= NNK_CUTOFF**2
    centre = np.all(offsets == 0, axis=1)
    return offsets[same_parity & within & ~centre].astype(np.int32)


def _nnk_rotation(direction: np.ndarray) -> np.ndarray:
    """R with crop'(n) = crop(R n): the rotation about z by a multiple of 90 degrees taking
    (1, 1) to (dx, dy), then the mirror z -> -z if dz < 0 (so the jumping atom, at R (1,1,1),
    sits at (+1, +1, +1) of the transformed crop)."""
    dx, dy, dz = (int(d) for d in direction)
    planar = {
        (1, 1): [[1, 0], [0, 1]],
        (-1, 1): [[0, -1], [1, 0]],
        (-1, -1): [[-1, 0], [0, -1]],
        (1, -1): [[0, 1], [-1, 0]],
    }[(dx, dy)]
    rotation = np.zeros((3, 3), np.int32)
    rotation[:2, :2] = planar
    rotation[2, 2] = dz
    return rotation


NNK_LIVE_OFFSETS = _nnk_live_offsets()
"""(112, 3) voxel offsets of the live inputs, in the network's input order."""
NNK_OFFSETS = np.stack([NNK_LIVE_OFFSETS @ _nnk_rotation(d).T for d in bcc.FIRST_SHELL])
"""(8, 112, 3): input j of direction k reads the site at ``vacancy + NNK_OFFSETS[k, j]``."""
_NNK_LIVE_FLAT = ((NNK_LIVE_OFFSETS + NNK_CROP // 2) @ np.array([NNK_CROP**2, NNK_CROP, 1])).astype(
    np.int64
)


def fold_nnk_weights(arrays) -> dict[str, np.ndarray]:
    """Fold the 4 BatchNorm layers into their linear layers and prune the first layer to the
    112 live inputs (both exact; computed in float64, returned as float32).

    ``gamma (x W + b - mu) / sqrt(var + eps) + beta = x (W s) + (b - mu) s + beta`` with
    ``s = gamma / sqrt(var + eps)``.
    """
    arrays = [np.asarray(a, np.float64) for a in arrays]
    expected = [(729, 128)] + [(128,)] * 5 + ([(128, 128)] + [(128,)] * 5) * 3 + [(128, 1), (1,)]
    if [a.shape for a in arrays] != expected:
        raise ValueError(
            "NNK weights must be 26 arrays: per hidden layer W, b, gamma, beta, running mean, "
            f"running var (729 -> 128 -> 128 -> 128 -> 128), then W_out (128, 1), b_out (1,); "
            f"got shapes {[a.shape for a in arrays]}."
        )
    weights, biases = [], []
    for layer in range(4):
        w, b, gamma, beta, mean, var = arrays[6 * layer : 6 * layer + 6]
        scale = gamma / np.sqrt(var + NNK_BN_EPS)
        weights.append(w * scale)
        biases.append((b - mean) * scale + beta)
    f32 = np.float32
    return {
        "first_weight": weights[0][_NNK_LIVE_FLAT].astype(f32),
        "first_bias": biases[0].astype(f32),
        "hidden_weights": np.stack(weights[1:]).astype(f32),
        "hidden_biases": np.stack(biases[1:]).astype(f32),
        "out_weight": arrays[24][:, 0].astype(f32),
        "out_bias": arrays[25][0].astype(f32),
    }


class NNKBarrier(AbstractBarrierModel):
    """The NNK barrier network, BatchNorm folded, input pruned to the 112 live sites.

    For direction k the input is the reference's 9x9x9 voxel crop around the vacancy, rotated
    about z and/or mirrored in z so that the jumping atom sits at (+1, +1, +1), species codes as
    floats (0 for vacancies, non-site voxels and voxels beyond 7.5 Angstrom); only its 112 live
    entries are gathered: ``x[k, j] = species(vacancy + NNK_OFFSETS[k, j])``. Then 4 layers
    ``x <- ReLU(x W + b)`` and ``E_b = x w_out + b_out`` (eV).

    Build with ``NNKBarrier.from_file(path)`` (the reference's ``weights.npy``).
    """

    first_weight: Float[Array, "112 128"]
    first_bias: Float[Array, "128"]
    hidden_weights: Float[Array, "3 128 128"]
    hidden_biases: Float[Array, "3 128"]
    out_weight: Float[Array, "128"]
    out_bias: Float[Array, ""]

    @classmethod
    def from_arrays(cls, arrays) -> NNKBarrier:
        """From the 26 raw arrays (see ``fold_nnk_weights``)."""
        return cls(**{k: jnp.asarray(v) for k, v in fold_nnk_weights(arrays).items()})

    @classmethod
    def from_file(cls, path: str | Path) -> NNKBarrier:
        """From the reference's ``weights.npy`` (an object array of 26 float32 arrays)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"NNK weights file {path} does not exist; pass the path of weights.npy "
                "(see the README for where it comes from)."
            )
        # The file is a pickled object array: load only weights files you trust.
        return cls.from_arrays(list(np.load(path, allow_pickle=True)))

    @property
    def influence_sq(self) -> int:
        return int((NNK_LIVE_OFFSETS**2).sum(1).max())

    def features(
        self, occupancy: Shaped[Array, "L L L 2"], vacancy: Int[Array, "3"]
    ) -> Float[Array, "8 112"]:
        """The 8 pruned network inputs (species codes as float32)."""
        sites = jnp.asarray(vacancy, jnp.int32) + jnp.asarray(NNK_OFFSETS)
        return bcc.gather_sites(occupancy, sites).astype(jnp.float32)

    def network(self, features: Float[Array, "*batch 112"]) -> Float[Array, "*batch"]:
        """The folded MLP on pruned inputs, eV."""
        hidden = jax.nn.relu(features @ self.first_weight + self.first_bias)
        for layer in range(3):
            hidden = hidden @ self.hidden_weights[layer] + self.hidden_biases[layer]
            hidden = jax.nn.relu(hidden)
        return hidden @ self.out_weight + self.out_bias

    @eqx.filter_jit
    def barriers(
        self, occupancy: Shaped[Array, "L L L 2"], vacancy: Int[Array, "3"]
    ) -> Float[Array, "8"]:
        return self.network(self.features(occupancy, vacancy))


# ------------------------------------------------------------------------------ KRA model
PAIR_NAMES = tuple(
    bcc.SPECIES[i] + bcc.SPECIES[j]
    for i, j in itertools.combinations_with_replacement((1, 2, 3), 2)
)
"""The 6 unordered atom pairs in the order of ``bcc.SRO_PAIRS``: NbNb, NbMo, NbTa, MoMo, MoTa,
TaTa."""
_KRA_REACH = np.concatenate(
    [
        (bcc.FIRST_SHELL[:, None] + bcc.FIRST_SHELL[None]).reshape(-1, 3),
        (bcc.FIRST_SHELL[:, None] + bcc.SECOND_SHELL[None]).reshape(-1, 3),
    ]
)


@jax.jit
def pair_matrix(values) -> Float[Array, "4 4"]:
    """The symmetric (4, 4) interaction matrix of the 6 pair values (``PAIR_NAMES`` order),
    with zero vacancy row and column."""
    values = jnp.asarray(values, jnp.float32)
    rows, cols = np.array(bcc.SRO_PAIRS).T
    matrix = jnp.zeros((bcc.NUM_SPECIES, bcc.NUM_SPECIES), jnp.float32)
    return matrix.at[rows, cols].set(values).at[cols, rows].set(values)


class KRABarrier(AbstractBarrierModel):
    """Kinetically resolved activation barriers with pair interactions (eV).

    E_b(i -> f) = E0[A] + (E_f - E_i) / 2, A the jumping atom's species, with the lattice energy

        E = sum_{first-shell bonds} V1[s_i, s_j] + sum_{second-shell bonds} V2[s_i, s_j],

    vacancy bonds zero. Only the bonds of A change: with A moving from site a to the vacancy v,
    E_f - E_i = sum_{n in N(v) \\ a} V[A, s_n] - sum_{n in N(a) \\ v} V[A, s_n] over both shells.
    Since E_b(i -> f) - E_b(f -> i) = E_f - E_i, the rates nu0 exp(-E_b / k_B T) satisfy
    detailed balance with respect to exp(-E / k_B T).

    Attributes:
        e0: (4,) eV, E0 per species code (entry 0 unused).
        v1, v2: (4, 4) symmetric pair energies, eV, zero vacancy row and column.
    """

    e0: Float[Array, "4"]
    v1: Float[Array, "4 4"]
    v2: Float[Array, "4 4"]

    @classmethod
    def from_parameters(cls, e0, v1, v2) -> KRABarrier:
        """From E0 of (Nb, Mo, Ta) and the 6 first- and second-shell pair energies in
        ``PAIR_NAMES`` order (eV)."""
        e0 = jnp.concatenate([jnp.zeros(1), jnp.asarray(e0, jnp.float32)])
        return cls(e0, pair_matrix(v1), pair_matrix(v2))

    @classmethod
    def nbmota(cls) -> KRABarrier:
        """The shipped NbMoTa parameters (``jmacro.systems._kra_nbmota``, with provenance)."""

        def pairs(table):
            return [table[name] for name in PAIR_NAMES]

        e0 = [_kra_nbmota.E0[name] for name in bcc.SPECIES[1:]]
        return cls.from_parameters(e0, pairs(_kra_nbmota.V1), pairs(_kra_nbmota.V2))

    @property
    def influence_sq(self) -> int:
        return int((_KRA_REACH**2).sum(1).max())

    def delta_energy(
        self, occupancy: Shaped[Array, "L L L 2"], vacancy: Int[Array, "3"]
    ) -> Float[Array, "8"]:
        """E_f - E_i (eV) of the 8 exchanges (see the class docstring)."""
        vacancy = jnp.asarray(vacancy, jnp.int32)
        first, second = jnp.asarray(bcc.FIRST_SHELL), jnp.asarray(bcc.SECOND_SHELL)
        jumper = vacancy + first  # (8, 3): the site a of each direction
        species = bcc.gather_sites(occupancy, jumper)  # (8,): A; also the first shell of v
        around_v2 = bcc.gather_sites(occupancy, vacancy + second)  # (6,)
        around_a1 = bcc.gather_sites(occupancy, jumper[:, None] + first)  # (8, 8), v is 0
        around_a2 = bcc.gather_sites(occupancy, jumper[:, None] + second)  # (8, 6)
        row1, row2 = self.v1[species], self.v2[species]  # (8, 4): V[A_k, .]
        not_self = 1.0 - jnp.eye(8, dtype=jnp.float32)  # N(v) \ a: drop the jumper's own bond
        gain = jnp.sum(
            jnp.take_along_axis(row1, species[None, :].astype(jnp.int32), 1) * not_self, 1
        )
        gain = gain + jnp.sum(row2[:, around_v2], axis=1)
        loss = jnp.sum(jnp.take_along_axis(row1, around_a1.astype(jnp.int32), 1), axis=1)
        loss = loss + jnp.sum(jnp.take_along_axis(row2, around_a2.astype(jnp.int32), 1), axis=1)
        return gain - loss

    @eqx.filter_jit
    def barriers(
        self, occupancy: Shaped[Array, "L L L 2"], vacancy: Int[Array, "3"]
    ) -> Float[Array, "8"]:
        species = bcc.gather_sites(occupancy, jnp.asarray(vacancy, jnp.int32) + bcc.FIRST_SHELL)
        return self.e0[species] + 0.5 * self.delta_energy(occupancy, vacancy)

    @eqx.filter_jit
    def lattice_energy(self, occupancy: Shaped[Array, "L L L 2"]) -> Float[Array, ""]:
        """E (eV) of a whole periodic occupancy, from its bond counts (``bcc.bond_counts``)."""
        return jnp.sum(bcc.bond_counts(occupancy, 1) * self.v1) + jnp.sum(
            bcc.bond_counts(occupancy, 2) * self.v2
        )


__all__ = [
    "NNK_LIVE_OFFSETS",
    "NNK_OFFSETS",
    "PAIR_NAMES",
    "AbstractBarrierModel",
    "KRABarrier",
    "NNKBarrier",
    "fold_nnk_weights",
    "pair_matrix",
]
