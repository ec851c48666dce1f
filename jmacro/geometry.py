"""Tilings of a state into patches (or overlapping windows) and the boundaries patches see.

Partial evolution and LocalRelax are written once over two small interfaces:

- a **tiling** (``AbstractTiling``) covers a state with patches indexed 0 ... K - 1. It cuts
  patch ``index`` out (``extract``), writes it back (``insert``), and builds the **boundary**
  the patch evolves with from the large state (``patch_with_boundary``). ``index`` may be
  traced, so one compiled program serves every patch. Tilings are frozen, hashable dataclasses
  holding sizes only; the large shape comes with the state and ``check(shape)`` validates it
  (and returns K) before any compute. With a stride smaller than the patch the patches overlap:
  these are LocalRelax's windows.
- a **boundary** (``AbstractBoundary``) is a small typed Equinox module: what an evolving patch
  sees outside itself. Systems dispatch on its type and refuse the types they do not support
  (``AbstractSystem.check_boundary``).

Implemented tilings:

- ``SquareTiling2D(size, stride=None)``: square patches of side l of an ``(H, W)`` periodic
  lattice, origins every ``stride`` sites (default l: the K = (H/l)(W/l) tiles, in the
  row-major order of ``lattice.tile``). Boundaries: ``Periodic``, ``FrozenHalo``, ``MeanField``.
- ``Segments1D(num_patches)`` / ``Segments1D(length=w, stride=s)``: K segments of n / K
  consecutive cells of an ``(n, *channels)`` field, or windows of w cells starting at
  0, s, ..., n - w (no wrap: the line has two physical ends). Boundary: ``Ghosts``.

- ``BCCTiling3D(size, stride=None)``: cubic tiles of size^3 cells of an ``(L, L, L, 2)`` BCC
  occupancy (``jmacro.bcc``); boundary ``Periodic``. Vacancy-centred windows are
  ``jmacro.bcc.window``.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Shaped

from jmacro import lattice
from jmacro._checks import check_positive_int, is_concrete


# ---------------------------------------------------------------------------------- boundaries
class AbstractBoundary(eqx.Module):
    """What an evolving patch sees outside itself. Built by a tiling from the large state.

    Subclasses are small immutable pytrees (they pass through ``jit`` and ``vmap``); ``name``
    is the string used in configs and JSON (``boundary_kind`` maps it back to the class).
    """

    name: eqx.AbstractClassVar[str]

    @abc.abstractmethod
    def check(self, patch: Shaped[Array, "..."]) -> None:
        """Raise ``ValueError`` if this boundary does not fit ``patch`` (shapes, sizes)."""


class Periodic(AbstractBoundary):
    """No outside: the patch evolves as an isolated small system with periodic wrap.

    The reference's choice for Ising partial evolution. For mean-field spins the patch is then
    its own whole system (its field is its own magnetisation).
    """

    name: ClassVar[str] = "periodic"

    def check(self, patch: Shaped[Array, "..."]) -> None:
        del patch


class FrozenHalo(AbstractBoundary):
    """The ring of real neighbours around a 2D patch, frozen while the patch evolves.

    Attributes:
        values: ``(h + 2, w + 2)`` padded array whose outer ring holds the neighbours of the
            ``(h, w)`` patch; its interior is ignored (the patch itself is evolved).
    """

    values: Shaped[Array, "hp wp"] = eqx.field(converter=jnp.asarray)
    name: ClassVar[str] = "halo"

    def check(self, patch: Shaped[Array, "..."]) -> None:
        expected = (patch.shape[0] + 2, patch.shape[1] + 2)
        if self.values.shape != expected:
            raise ValueError(
                f"halo must have shape {expected} for spins of shape {patch.shape}, "
                f"got {self.values.shape}."
            )


class MeanField(AbstractBoundary):
    """The field of the whole large system (mean-field spins).

    The patch's spins feel the magnetisation of all ``num_total`` spins; those outside the
    patch are frozen and sum to ``background_sum``. The field is updated as patch spins flip.

    Attributes:
        background_sum: sum of the frozen spins outside the patch (int32 scalar).
        num_total: N, the number of spins of the whole system (static).
    """

    background_sum: Int[Array, ""] = eqx.field(converter=lambda x: jnp.asarray(x, jnp.int32))
    num_total: int = eqx.field(static=True)
    name: ClassVar[str] = "mean_field"

    def check(self, patch: Shaped[Array, "..."]) -> None:
        """``num_total`` >= the patch size and, when concrete, a ``background_sum`` that
        ``num_total - patch.size`` frozen spins of +-1 can have: ``|background_sum| <=
        num_total - patch.size`` with the same parity. A traced sum (inside ``jit`` or
        ``vmap``, e.g. built by ``SquareTiling2D.patch_with_boundary``) is not checked."""
        num_total = check_positive_int(self.num_total, "num_total")
        if num_total < patch.size:
            raise ValueError(
                f"num_total={num_total} is smaller than the number of evolving spins {patch.size}."
            )
        if is_concrete(self.background_sum):
            outside = num_total - patch.size
            value = int(np.asarray(self.background_sum))
            if abs(value) > outside or (value - outside) % 2:
                raise ValueError(
                    f"background_sum={value} is impossible for the {outside} frozen spins "
                    f"outside the patch (num_total={num_total} - {patch.size} evolving): it "
                    f"must satisfy |background_sum| <= {outside} and have the parity of "
                    f"{outside}."
                )


class Ghosts(AbstractBoundary):
    """One ghost cell beyond each end of a 1D segment.

    At an end inside the line the ghost is the real neighbouring cell, frozen at its value at
    the start; at a physical end of the line (``neumann``) it replicates the segment's own
    current edge cell at every step (the full system's Neumann rule).

    Attributes:
        values: ``(2, *channels)``: row 0 the cell left of the segment, row 1 the cell right
            of it (at a physical end: the segment's edge cell at the start).
        neumann: ``(2,)`` bool: True for a side that is a physical end.
        dx: cell width of the large field, 1/n (a patch in physical units needs it).
    """

    values: Float[Array, " 2 *channels"]
    neumann: Bool[Array, "2"]
    dx: float = eqx.field(static=True)
    name: ClassVar[str] = "ghosts"

    def check(self, patch: Shaped[Array, "..."]) -> None:
        if self.values.shape != (2, *patch.shape[1:]):
            raise ValueError(
                f"ghosts must have shape {(2, *patch.shape[1:])} for a segment of shape "
                f"{patch.shape}, got {self.values.shape}."
            )


BOUNDARY_KINDS: dict[str, type[AbstractBoundary]] = {
    cls.name: cls for cls in (Periodic, FrozenHalo, MeanField, Ghosts)
}
"""Config name -> boundary class."""


def boundary_kind(kind: type[AbstractBoundary] | str) -> type[AbstractBoundary]:
    """The boundary class for a class or its config name (``"periodic"``, ``"halo"``,
    ``"mean_field"``, ``"ghosts"``); raises ``ValueError`` for anything else."""
    if isinstance(kind, type) and issubclass(kind, AbstractBoundary):
        return kind
    if isinstance(kind, str) and kind in BOUNDARY_KINDS:
        return BOUNDARY_KINDS[kind]
    raise ValueError(
        f"boundary must be one of {sorted(BOUNDARY_KINDS)} or a boundary class "
        f"({', '.join(c.__name__ for c in BOUNDARY_KINDS.values())}), got {kind!r}."
    )


def _names(kinds) -> str:
    return ", ".join(k.__name__ for k in kinds)


# ---------------------------------------------------------------------------------- tilings
class AbstractTiling(abc.ABC):
    """Patches (or windows) 0 ... K - 1 covering a state. Subclasses are frozen dataclasses.

    Class attributes:
        boundaries: the boundary classes ``patch_with_boundary`` can build; the first is the
            default of partial evolution.
        frozen_boundary: the frozen-neighbour boundary (the default of LocalRelax).
    """

    boundaries: ClassVar[tuple[type[AbstractBoundary], ...]]
    frozen_boundary: ClassVar[type[AbstractBoundary]]

    @abc.abstractmethod
    def check(self, shape: int | tuple[int, ...]) -> int:
        """Validate a state shape (``int``: a square side / a number of cells); return K."""

    @abc.abstractmethod
    def extract(self, state: Shaped[Array, "..."], index) -> Shaped[Array, "..."]:
        """Patch ``index`` of ``state`` (``index`` may be traced)."""

    @abc.abstractmethod
    def insert(
        self, state: Shaped[Array, "..."], index, patch: Shaped[Array, "..."]
    ) -> Shaped[Array, "..."]:
        """``state`` with patch ``index`` replaced by ``patch`` (cast to the state's dtype)."""

    @abc.abstractmethod
    def insert_many(
        self, state: Shaped[Array, "..."], indices, patches: Shaped[Array, "..."]
    ) -> Shaped[Array, "..."]:
        """``state`` with the DISJOINT patches ``indices`` replaced by ``patches``."""

    @abc.abstractmethod
    def patch_with_boundary(
        self, state: Shaped[Array, "..."], index, kind: type[AbstractBoundary]
    ) -> tuple[Shaped[Array, "..."], AbstractBoundary]:
        """Patch ``index`` and the boundary of type ``kind`` it sees in ``state``."""

    @abc.abstractmethod
    def groups(self, shape: int | tuple[int, ...]) -> list[np.ndarray]:
        """The patch indices split into groups of mutually disjoint patches, in order.

        A parallel LocalRelax evolves the patches of a group at once, groups one after another.
        """

    def check_boundary(self, kind: type[AbstractBoundary]) -> None:
        """Raise ``ValueError`` unless this tiling can build boundaries of type ``kind``."""
        if kind not in self.boundaries:
            raise ValueError(
                f"{type(self).__name__} cannot build a {kind.__name__} boundary; it builds "
                f"{_names(self.boundaries)}."
            )


def _lattice_shape(shape) -> tuple[int, ...]:
    if isinstance(shape, int | np.integer):
        return (int(shape), int(shape))
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"a 2D tiling needs a state of shape (H, W, ...), got {shape}.")
    return shape


@dataclasses.dataclass(frozen=True)
class SquareTiling2D(AbstractTiling):
    """Square patches of side ``size`` of a periodic ``(H, W, *channels)`` lattice.

    Patch ``index`` has its origin at row ``(index // (W / s)) s``, column
    ``(index % (W / s)) s`` with s = ``stride``, and wraps around the periodic edges.
    ``stride=None`` (= ``size``): the K = (H / l)(W / l) non-overlapping tiles of
    ``lattice.tile``, which needs l to divide H and W. A smaller stride gives overlapping
    windows (LocalRelax); s must divide H and W, and the window side must not exceed them.

    Boundaries: ``Periodic`` (the patch alone), ``FrozenHalo`` (its ring of real neighbours),
    ``MeanField`` (the spin sum of the rest of the lattice and its size).
    """

    size: int
    stride: int | None = None

    boundaries: ClassVar[tuple[type[AbstractBoundary], ...]] = (Periodic, FrozenHalo, MeanField)
    frozen_boundary: ClassVar[type[AbstractBoundary]] = FrozenHalo

    def __post_init__(self):
        check_positive_int(self.size, "patch size")
        if self.stride is not None:
            check_positive_int(self.stride, "stride")

    @property
    def step(self) -> int:
        """Distance between patch origins."""
        return self.size if self.stride is None else self.stride

    def check(self, shape: int | tuple[int, ...]) -> int:
        height, width = _lattice_shape(shape)[:2]
        if self.stride is None:
            lattice.check_patch_size((height, width), self.size)  # raises "does not tile"
            return (height // self.size) * (width // self.size)
        if self.size > min(height, width):
            raise ValueError(f"window {self.size} exceeds the lattice {(height, width)}.")
        if height % self.stride or width % self.stride:
            raise ValueError(
                f"window stride {self.stride} must divide the lattice sides {(height, width)}."
            )
        return (height // self.stride) * (width // self.stride)

    def _rows_cols(self, shape, index, halo: int = 0):
        height, width = shape[:2]
        per_row = width // self.step
        row = (index // per_row) * self.step - halo
        col = (index % per_row) * self.step - halo
        span = self.size + 2 * halo
        rows = (row + jnp.arange(span)) % height
        cols = (col + jnp.arange(span)) % width
        return rows, cols

    def cut(self, state: Shaped[Array, "H W *rest"], index, halo: int = 0) -> Shaped[Array, "..."]:
        """Patch ``index`` with ``halo`` rings of its real (periodic) neighbours."""
        rows, cols = self._rows_cols(state.shape, index, halo)
        return state[rows[:, None], cols[None, :]]

    def extract(self, state: Shaped[Array, "H W *rest"], index) -> Shaped[Array, "h w *rest"]:
        return self.cut(state, index)

    def insert(
        self, state: Shaped[Array, "H W *rest"], index, patch: Shaped[Array, "h w *rest"]
    ) -> Shaped[Array, "H W *rest"]:
        rows, cols = self._rows_cols(state.shape, index)
        return state.at[rows[:, None], cols[None, :]].set(patch.astype(state.dtype))

    def insert_many(
        self, state: Shaped[Array, "H W *rest"], indices, patches: Shaped[Array, "G h w *rest"]
    ) -> Shaped[Array, "H W *rest"]:
        rows, cols = jax.vmap(lambda i: self._rows_cols(state.shape, i))(jnp.asarray(indices))
        return state.at[rows[:, :, None], cols[:, None, :]].set(patches.astype(state.dtype))

    def patch_with_boundary(
        self, state: Shaped[Array, "H W *rest"], index, kind: type[AbstractBoundary]
    ) -> tuple[Shaped[Array, "h w *rest"], AbstractBoundary]:
        self.check_boundary(kind)
        if kind is FrozenHalo:
            cut = self.cut(state, index, halo=1)
            return cut[1:-1, 1:-1], FrozenHalo(cut)
        patch = self.extract(state, index)
        if kind is MeanField:
            total = state.astype(jnp.int32).sum()
            return patch, MeanField(total - patch.astype(jnp.int32).sum(), state.size)
        return patch, Periodic()

    def groups(self, shape: int | tuple[int, ...]) -> list[np.ndarray]:
        height, width = _lattice_shape(shape)[:2]
        self.check((height, width))
        if height % self.size or width % self.size or self.size % self.step:
            raise ValueError(
                f"the parallel schedule needs window | side and stride | window, got window "
                f"{self.size}, stride {self.step}, lattice {(height, width)}."
            )
        ratio, per_row = self.size // self.step, width // self.step
        out = []
        for a in range(ratio):
            for b in range(ratio):
                # Windows with origins (a s + i w, b s + j w): disjoint tiles of the lattice
                # shifted by (a s, b s), row-major in (i, j).
                rows = a + ratio * np.arange(height // self.size)
                cols = b + ratio * np.arange(width // self.size)
                out.append((rows[:, None] * per_row + cols[None, :]).reshape(-1).astype(np.int32))
        return out


def _start_indices(first, ndim: int) -> tuple:
    """``(first, 0, ..., 0)`` of one integer dtype: under JAX_ENABLE_X64 a literal 0 becomes
    int64 while a traced index stays int32, and ``dynamic_slice`` refuses mixed dtypes."""
    first = jnp.asarray(first)
    return (first,) + (jnp.zeros_like(first),) * (ndim - 1)


def _num_cells(shape) -> int:
    if isinstance(shape, int | np.integer):
        return int(shape)
    shape = tuple(shape)
    if len(shape) < 1:
        raise ValueError("a 1D tiling needs a state of shape (n, *channels), got a scalar.")
    return int(shape[0])


@dataclasses.dataclass(frozen=True)
class Segments1D(AbstractTiling):
    """Segments of consecutive cells of a 1D field ``(n, *channels)`` (axis 0 is the line).

    Give either ``num_patches`` = K (the K segments of l = n / K cells: segment I covers cells
    I l ... I l + l - 1; K must divide n), or ``length`` = w with an optional ``stride`` = s
    (windows of w cells starting at 0, s, 2 s, ..., n - w; s must divide n - w; default s = w).
    Windows do not wrap: the line has two physical ends.

    Boundary: ``Ghosts``, one ghost cell per side: the real neighbouring cell (frozen), or at a
    physical end the Neumann replica of the segment's own edge cell.
    """

    num_patches: int | None = None
    length: int | None = None
    stride: int | None = None

    boundaries: ClassVar[tuple[type[AbstractBoundary], ...]] = (Ghosts,)
    frozen_boundary: ClassVar[type[AbstractBoundary]] = Ghosts

    def __post_init__(self):
        if (self.num_patches is None) == (self.length is None):
            raise ValueError(
                "Segments1D needs exactly one of num_patches (K segments) or length "
                f"(windows of `length` cells), got num_patches={self.num_patches}, "
                f"length={self.length}."
            )
        if self.num_patches is not None:
            check_positive_int(self.num_patches, "num_patches")
            if self.stride is not None:
                raise ValueError("stride goes with length (windows), not with num_patches.")
        else:
            check_positive_int(self.length, "segment length")
            if self.stride is not None:
                check_positive_int(self.stride, "stride")

    def layout(self, shape: int | tuple[int, ...]) -> tuple[int, int, int]:
        """``(length, stride, K)`` on a field of ``shape``; raises if they do not fit."""
        num_cells = check_positive_int(_num_cells(shape), "number of cells")
        if self.num_patches is not None:
            if num_cells % self.num_patches:
                divisors = [d for d in range(1, num_cells + 1) if num_cells % d == 0]
                raise ValueError(
                    f"num_patches = {self.num_patches} does not divide the {num_cells} cells of "
                    f"the field; choose K among the divisors {divisors}."
                )
            length = num_cells // self.num_patches
            return length, length, self.num_patches
        if self.length > num_cells:
            raise ValueError(f"window {self.length} exceeds the {num_cells} cells of the field.")
        if self.stride is None:
            if num_cells % self.length:
                raise ValueError(
                    f"segments of {self.length} cells do not tile the {num_cells} cells of the "
                    "field; give a stride for overlapping windows, or a length dividing n."
                )
            return self.length, self.length, num_cells // self.length
        if (num_cells - self.length) % self.stride:
            raise ValueError(
                f"window stride {self.stride} must divide num_cells - window = "
                f"{num_cells - self.length} so that the windows end at the last cell."
            )
        return self.length, self.stride, (num_cells - self.length) // self.stride + 1

    def check(self, shape: int | tuple[int, ...]) -> int:
        return self.layout(shape)[2]

    def extract(self, state: Shaped[Array, " n *rest"], index) -> Shaped[Array, " l *rest"]:
        length, stride, _ = self.layout(state.shape)
        start = _start_indices(index * stride, state.ndim)
        return jax.lax.dynamic_slice(state, start, (length, *state.shape[1:]))

    def insert(
        self, state: Shaped[Array, " n *rest"], index, patch: Shaped[Array, " l *rest"]
    ) -> Shaped[Array, " n *rest"]:
        _, stride, _ = self.layout(state.shape)
        start = _start_indices(index * stride, state.ndim)
        return jax.lax.dynamic_update_slice(state, patch.astype(state.dtype), start)

    def insert_many(
        self, state: Shaped[Array, " n *rest"], indices, patches: Shaped[Array, "G l *rest"]
    ) -> Shaped[Array, " n *rest"]:
        length, stride, _ = self.layout(state.shape)
        cells = jnp.asarray(indices)[:, None] * stride + jnp.arange(length)
        return state.at[cells].set(patches.astype(state.dtype))

    def patch_with_boundary(
        self, state: Shaped[Array, " n *rest"], index, kind: type[AbstractBoundary]
    ) -> tuple[Shaped[Array, " l *rest"], AbstractBoundary]:
        self.check_boundary(kind)
        num_cells = state.shape[0]
        length, stride, _ = self.layout(state.shape)
        start = index * stride
        # Neumann-padded field: the cells beyond the physical ends replicate the end cells.
        padded = jnp.concatenate([state[:1], state, state[-1:]], axis=0)
        cut = jax.lax.dynamic_slice(
            padded, _start_indices(start, state.ndim), (length + 2, *state.shape[1:])
        )
        ghosts = jnp.stack([cut[0], cut[-1]])
        neumann = jnp.stack([start == 0, start + length == num_cells])
        return cut[1:-1], Ghosts(ghosts, neumann, 1.0 / num_cells)

    def groups(self, shape: int | tuple[int, ...]) -> list[np.ndarray]:
        length, stride, count = self.layout(shape)
        if length % stride:
            raise ValueError(
                f"the parallel schedule needs stride | window, got window {length}, "
                f"stride {stride}."
            )
        ratio = length // stride
        return [np.arange(a, count, ratio, dtype=np.int32) for a in range(ratio)]


def _cube_side(shape) -> int:
    if isinstance(shape, int | np.integer):
        return int(shape)
    shape = tuple(int(s) for s in shape)
    if len(shape) < 3 or not shape[0] == shape[1] == shape[2]:
        raise ValueError(f"a 3D tiling needs a cubic state (L, L, L, ...), got {shape}.")
    return shape[0]


@dataclasses.dataclass(frozen=True)
class BCCTiling3D(AbstractTiling):
    """Cubic tiles of ``size``^3 cells of a periodic BCC occupancy ``(L, L, L, 2)``
    (``jmacro.bcc`` layout: cells, then the 2 sublattices; any trailing axes ride along).

    Tile ``index`` has its origin at cells ``s (a, b, c)``, (a, b, c) the row-major digits of
    ``index`` in base L / s, s = ``stride`` (default ``size``: the K = (L / l)^3 disjoint
    tiles, e.g. 8^3 cells = 1,024 sites, one vacancy each after upsampling); tiles wrap around
    the periodic box. A smaller stride gives overlapping windows (LocalRelax); s must divide L.

    Boundary: ``Periodic`` only (a tile evolves as a small periodic crystal, as in the
    reference); it is also the LocalRelax default.
    """

    size: int = 8
    stride: int | None = None

    boundaries: ClassVar[tuple[type[AbstractBoundary], ...]] = (Periodic,)
    frozen_boundary: ClassVar[type[AbstractBoundary]] = Periodic

    def __post_init__(self):
        check_positive_int(self.size, "tile size (cells)")
        if self.stride is not None:
            check_positive_int(self.stride, "stride")

    @property
    def step(self) -> int:
        """Distance between tile origins, in cells."""
        return self.size if self.stride is None else self.stride

    def check(self, shape: int | tuple[int, ...]) -> int:
        side = _cube_side(shape)
        if self.size > side or side % self.step:
            raise ValueError(
                f"tiles of {self.size} cells every {self.step} cells do not tile a box of "
                f"{side} cells per side: the stride must divide it and the tile fit in it."
            )
        return (side // self.step) ** 3

    def _cells(self, side: int, index) -> tuple[Array, Array, Array]:
        per_side = side // self.step
        digits = (index // per_side**2, (index // per_side) % per_side, index % per_side)
        span = jnp.arange(self.size)
        xs, ys, zs = ((d * self.step + span) % side for d in digits)
        return xs[:, None, None], ys[None, :, None], zs[None, None, :]

    def extract(self, state: Shaped[Array, "L L L *rest"], index) -> Shaped[Array, "l l l *rest"]:
        return state[self._cells(state.shape[0], index)]

    def insert(
        self, state: Shaped[Array, "L L L *rest"], index, patch: Shaped[Array, "l l l *rest"]
    ) -> Shaped[Array, "L L L *rest"]:
        return state.at[self._cells(state.shape[0], index)].set(patch.astype(state.dtype))

    def insert_many(
        self, state: Shaped[Array, "L L L *rest"], indices, patches: Shaped[Array, "G l l l *rest"]
    ) -> Shaped[Array, "L L L *rest"]:
        cells = jax.vmap(lambda i: self._cells(state.shape[0], i))(jnp.asarray(indices))
        return state.at[cells].set(patches.astype(state.dtype))

    def patch_with_boundary(
        self, state: Shaped[Array, "L L L *rest"], index, kind: type[AbstractBoundary]
    ) -> tuple[Shaped[Array, "l l l *rest"], AbstractBoundary]:
        self.check_boundary(kind)
        return self.extract(state, index), Periodic()

    def groups(self, shape: int | tuple[int, ...]) -> list[np.ndarray]:
        side = _cube_side(shape)
        self.check(side)
        if side % self.size or self.size % self.step:
            raise ValueError(
                f"the parallel schedule needs tile | side and stride | tile, got tile "
                f"{self.size}, stride {self.step}, side {side}."
            )
        ratio, per_side, count = self.size // self.step, side // self.step, side // self.size
        out = []
        for shift in itertools.product(range(ratio), repeat=3):
            # Tiles with origins s (shift + ratio i): disjoint tiles of the shifted box.
            a, b, c = (d + ratio * np.arange(count) for d in shift)
            flat = (a[:, None, None] * per_side + b[None, :, None]) * per_side + c[None, None, :]
            out.append(flat.reshape(-1).astype(np.int32))
        return out


def cell_centres(num_cells: int) -> Float[Array, " n"]:
    """x_i = (i + 1/2) / n, the centres of the n cells of (0, 1)."""
    num_cells = check_positive_int(num_cells, "num_cells")
    return (jnp.arange(num_cells, dtype=jnp.float32) + 0.5) / num_cells


def check_finite(x: ArrayLike, name: str) -> None:
    """Raise ``ValueError`` if a concrete float array has a NaN or infinite entry, naming the
    count and the first bad index."""
    if not is_concrete(x):
        return
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        return
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} must be finite: {int(bad.sum())} non-finite entries (first at index "
            f"{first}: {arr[first]!r})."
        )


__all__ = [
    "BOUNDARY_KINDS",
    "AbstractBoundary",
    "AbstractTiling",
    "BCCTiling3D",
    "FrozenHalo",
    "Ghosts",
    "MeanField",
    "Periodic",
    "Segments1D",
    "SquareTiling2D",
    "boundary_kind",
    "cell_centres",
    "check_finite",
]
