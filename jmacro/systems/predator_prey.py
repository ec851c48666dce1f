"""Stochastic predator-prey reaction-diffusion SPDE in 1D (REFERENCE.md 2.4).

Two fields, prey u and predator v, on n cell centres x_i = (i + 1/2) / n of (0, 1)::

    du = [u (1 - u - v) + D lap(u)] dt + sigma dW_u,
    dv = [a v (u - b)   +   lap(v)] dt + sigma dW_v,

with Neumann (replicate) boundaries: the value beyond each end equals the end cell's own value.
A state is ONE float32 array of shape ``(n, 2)``: axis 0 is the cell, axis 1 the species
``(u, v)`` (the layout of the field autoencoder). Batch with ``jax.vmap``.

Two scalings of the Laplacian and the noise (``PredatorPrey.scaling``):

- ``"lattice"`` (the reference's, default): lap(f)_i = f_{i-1} - 2 f_i + f_{i+1} (no 1/dx^2),
  and the noise increment of a cell over one step is sigma sqrt(dt) N(0, 1). Time and space are
  in lattice units: the model does not converge as n grows; n is part of the model.
- ``"physical"``: lap(f)_i = (f_{i-1} - 2 f_i + f_{i+1}) / dx^2 and the noise increment is
  sigma sqrt(dt / dx) N(0, 1), dx = 1/n: a space-time white noise discretised on cells, so that
  refining n approximates one continuum SPDE. Explicit time stepping then needs
  dt <= dx^2 / (2 max(1, D)): about 1.2e-5 at n = 200.

Time stepping: Euler-Maruyama (default, the reference) or the stochastic Heun scheme
(predictor-corrector, deterministic order 2; for this additive noise it converges to the Itô
solution). Noise is independent across cells, species and steps.

Boundaries for patches: ``drift``/``step`` take optional ``ghosts``, a ``(2, 2)`` array whose
row 0 holds the (frozen) values beyond the left end and row 1 those beyond the right end, per
species, and ``neumann``, a ``(2,)`` bool array: True for a side that replicates the evolving
field's own current edge cell instead (a physical end). ``ghosts=None`` means Neumann on both
sides. Partial evolution (``jmacro.scale.fields``) uses frozen neighbours inside the lattice and
Neumann at the physical ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

from jmacro._checks import check_positive_int, is_concrete

Scaling = Literal["lattice", "physical"]
Method = Literal["euler_maruyama", "heun"]
NUM_SPECIES = 2


class SimulationBlowUpError(RuntimeError):
    """A simulated field became non-finite (NaN or inf): the time step is too large for the
    parameters, or the initial condition is far outside the stable range."""


# ---------------------------------------------------------------------------------- schemes
def euler_maruyama_step(
    drift_fn: Callable[[Array], Array],
    diffusion_fn: Callable[[Array], Array],
    x: Float[Array, "*shape"],
    dt: float | Float[ArrayLike, ""],
    dw: Float[Array, "*shape"],
) -> Float[Array, "*shape"]:
    """One Euler-Maruyama step of the Itô SDE dx = f(x) dt + g(x) dW with diagonal noise.

    x_{t+dt} = x + f(x) dt + g(x) * dw, where ``dw`` holds the Brownian increments over the
    step (independent N(0, dt) entries, the shape of ``x``) and ``g(x)`` is elementwise (any
    shape that broadcasts against ``x``). Strong order 1/2 for multiplicative noise, 1 for
    additive noise (g constant).
    """
    return x + drift_fn(x) * dt + diffusion_fn(x) * dw


def heun_step(
    drift_fn: Callable[[Array], Array],
    diffusion_fn: Callable[[Array], Array],
    x: Float[Array, "*shape"],
    dt: float | Float[ArrayLike, ""],
    dw: Float[Array, "*shape"],
) -> Float[Array, "*shape"]:
    """One stochastic Heun step (predictor-corrector, Stratonovich sense).

    x~ = x + f(x) dt + g(x) dw;   x_{t+dt} = x + (f(x) + f(x~)) dt / 2 + (g(x) + g(x~)) dw / 2.
    For additive noise (g constant) Itô and Stratonovich coincide; the deterministic part is
    then second order and the strong order is 1.
    """
    drift, noise = drift_fn(x), diffusion_fn(x)
    predicted = x + drift * dt + noise * dw
    return (
        x + 0.5 * (drift + drift_fn(predicted)) * dt + 0.5 * (noise + diffusion_fn(predicted)) * dw
    )


# ---------------------------------------------------------------------------------- helpers
def cell_centres(num_cells: int) -> Float[Array, " n"]:
    """x_i = (i + 1/2) / n, the centres of the n cells of (0, 1)."""
    num_cells = check_positive_int(num_cells, "num_cells")
    return (jnp.arange(num_cells, dtype=jnp.float32) + 0.5) / num_cells


def initial_condition(
    num_cells: int, k: float | Float[ArrayLike, ""], m: float | Float[ArrayLike, ""]
) -> Float[Array, "n 2"]:
    """The reference initial condition u = m + k cos(10 pi x), v = (1 - m) - k cos(10 pi x).

    ``k`` and ``m`` may be traced (vmap over them); returns float32 ``(num_cells, 2)``. The
    reference trains on k ~ U(0.05, 0.15), m ~ U(0.45, 0.55) and tests on the 3 x 3 grid
    k in {0.05, 0.1, 0.15} x m in {0.45, 0.5, 0.55}.
    """
    wave = jnp.asarray(k, jnp.float32) * jnp.cos(10.0 * jnp.pi * cell_centres(num_cells))
    m = jnp.asarray(m, jnp.float32)
    return jnp.stack([m + wave, (1.0 - m) - wave], axis=-1)


def pad_fields(
    fields: Float[Array, "n 2"],
    ghosts: Float[Array, "2 2"] | None = None,
    neumann: Bool[ArrayLike, "2"] | None = None,
) -> Float[Array, "n+2 2"]:
    """The ``(n + 2, 2)`` array of ``fields`` with one ghost cell on each side.

    Args:
        fields: ``(n, 2)`` cells x species.
        ghosts: ``(2, 2)``: row 0 the values beyond the left end, row 1 beyond the right end.
            ``None``: Neumann (replicate the edge cells) on both sides.
        neumann: optional ``(2,)`` bool (may be traced): True for a side that replicates the
            edge cell of ``fields`` instead of using ``ghosts`` (a physical end of a patch).
            Ignored when ``ghosts`` is None.
    """
    left, right = fields[:1], fields[-1:]
    if ghosts is not None:
        if neumann is None:
            left, right = ghosts[:1], ghosts[1:]
        else:
            neumann = jnp.asarray(neumann, bool)
            left = jnp.where(neumann[0], left, ghosts[:1])
            right = jnp.where(neumann[1], right, ghosts[1:])
    return jnp.concatenate([left, fields, right], axis=0)


def laplacian_padded(padded: Float[Array, "p 2"]) -> Float[Array, "p-2 2"]:
    """3-point stencil f_{i-1} - 2 f_i + f_{i+1} on the interior of a padded array (no 1/dx^2).

    For a spatially uniform field the result is exactly 0 in floating point."""
    return padded[:-2] - 2.0 * padded[1:-1] + padded[2:]


def _describe_nonfinite(arr: np.ndarray) -> str:
    bad = ~np.isfinite(arr)
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    return f"{int(bad.sum())} non-finite entries (first at index {first}: {arr[first]!r})"


def check_fields(fields, name: str = "fields", batched: bool = False) -> None:
    """Raise ``ValueError`` unless ``fields`` has shape ``(n, 2)`` (``(B, n, 2)`` if
    ``batched``) with n >= 1 and, when concrete, only finite entries."""
    shape = tuple(np.shape(fields))
    ndim = 3 if batched else 2
    expected = "(B, n, 2)" if batched else "(n, 2)"
    if len(shape) != ndim or shape[-1] != NUM_SPECIES or shape[-2] < 1 or 0 in shape:
        hint = "" if batched else " (use jax.vmap for batches)"
        raise ValueError(
            f"{name} must have shape {expected} (cells x species u, v), got {shape}{hint}."
        )
    if is_concrete(fields):
        arr = np.asarray(fields)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite: {_describe_nonfinite(arr)}.")


def _as_param(value, name: str, minimum: float | None = None, strict: bool = False):
    if is_concrete(value):
        arr = np.asarray(value)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite, got {arr!r}.")
        if minimum is not None and (np.any(arr <= minimum) if strict else np.any(arr < minimum)):
            op = ">" if strict else ">="
            raise ValueError(f"{name} must be {op} {minimum}, got {arr!r}.")
    return jnp.asarray(value, jnp.float32)


# ---------------------------------------------------------------------------------- system
class PredatorPrey(eqx.Module):
    """The stochastic predator-prey SPDE on one 1D field ``(n, 2)`` (see the module docstring).

    du = [u (1 - u - v) + D lap(u)] dt + sigma dW_u,   dv = [a v (u - b) + lap(v)] dt + sigma dW_v

    Attributes:
        a: predator growth rate (reference 3). Float32 scalar array: vmap over it if wanted.
        b: prey level at which predators break even (reference 0.4).
        diffusion: D >= 0, the prey diffusion coefficient (reference 0; predators diffuse
            with coefficient 1).
        sigma: noise amplitude >= 0 (reference 0.02).
        dt: time step > 0 (reference 0.01; 3000 steps per trajectory).
        scaling: ``"lattice"`` (reference: no 1/dx^2, noise sigma sqrt(dt)) or ``"physical"``
            (lap / dx^2, noise sigma sqrt(dt / dx), dx = 1/n). Static.
        method: ``"euler_maruyama"`` (reference) or ``"heun"``. Static.

    Example::

        system = PredatorPrey()
        x0 = initial_condition(200, k=0.1, m=0.5)
        path = jax.jit(lambda x, k: system.simulate(x, k, 3000, 10))(x0, jr.key(0))
        # (301, 200, 2); many trajectories: jax.vmap, or simulate_ensemble on the host.
    """

    a: Float[Array, ""]
    b: Float[Array, ""]
    diffusion: Float[Array, ""]
    sigma: Float[Array, ""]
    dt: Float[Array, ""]
    scaling: str = eqx.field(static=True)
    method: str = eqx.field(static=True)

    def __init__(
        self,
        a=3.0,
        b=0.4,
        diffusion=0.0,
        sigma=0.02,
        dt=0.01,
        scaling: Scaling = "lattice",
        method: Method = "euler_maruyama",
    ):
        if scaling not in ("lattice", "physical"):
            raise ValueError(f"scaling must be 'lattice' or 'physical', got {scaling!r}.")
        if method not in ("euler_maruyama", "heun"):
            raise ValueError(f"method must be 'euler_maruyama' or 'heun', got {method!r}.")
        self.a = _as_param(a, "a")
        self.b = _as_param(b, "b")
        self.diffusion = _as_param(diffusion, "diffusion (D)", minimum=0.0)
        self.sigma = _as_param(sigma, "sigma", minimum=0.0)
        self.dt = _as_param(dt, "dt", minimum=0.0, strict=True)
        self.scaling = scaling
        self.method = method

    # ------------------------------------------------------------------ equation
    def _spacing(self, fields, dx):
        if dx is None:
            return 1.0 / fields.shape[0]
        return dx

    def drift(
        self,
        fields: Float[Array, "n 2"],
        ghosts: Float[Array, "2 2"] | None = None,
        *,
        neumann: Bool[ArrayLike, "2"] | None = None,
        dx: float | Float[ArrayLike, ""] | None = None,
    ) -> Float[Array, "n 2"]:
        """Deterministic right-hand side ``(u (1-u-v) + D lap u, a v (u-b) + lap v)``, ``(n, 2)``.

        Args:
            fields: ``(n, 2)``.
            ghosts, neumann: boundary values, as in ``pad_fields`` (default Neumann).
            dx: cell width for ``"physical"`` scaling; default 1/n. A patch of a larger field
                must pass the large field's 1/n.
        """
        padded = pad_fields(fields, ghosts, neumann)
        lap = laplacian_padded(padded)
        if self.scaling == "physical":
            lap = lap / jnp.square(self._spacing(fields, dx))
        u, v = fields[:, 0], fields[:, 1]
        du = u * (1.0 - u - v) + self.diffusion * lap[:, 0]
        dv = self.a * v * (u - self.b) + lap[:, 1]
        return jnp.stack([du, dv], axis=-1)

    def noise_scale(
        self, num_cells: int, dx: float | Float[ArrayLike, ""] | None = None
    ) -> Float[Array, ""]:
        """g in ``sigma_eff dW``: sigma (lattice) or sigma / sqrt(dx) (physical)."""
        if self.scaling == "physical":
            return self.sigma / jnp.sqrt(1.0 / num_cells if dx is None else dx)
        return self.sigma

    def step_with_increment(
        self,
        fields: Float[Array, "n 2"],
        dw: Float[Array, "n 2"],
        ghosts: Float[Array, "2 2"] | None = None,
        *,
        neumann: Bool[ArrayLike, "2"] | None = None,
        dx: float | Float[ArrayLike, ""] | None = None,
    ) -> Float[Array, "n 2"]:
        """One step given the Brownian increments ``dw`` (entries N(0, dt)), ``(n, 2)``.

        Euler-Maruyama: x + drift(x) dt + g dw with g = ``noise_scale``; or stochastic Heun.
        The boundary values (``ghosts``, ``neumann``) hold for the whole step. Use this to
        drive several time steps with one Brownian path (convergence tests).
        """
        scale = self.noise_scale(fields.shape[0], dx)
        scheme = euler_maruyama_step if self.method == "euler_maruyama" else heun_step
        return scheme(
            lambda x: self.drift(x, ghosts, neumann=neumann, dx=dx),
            lambda x: scale,
            fields,
            self.dt,
            dw,
        )

    def step(
        self,
        fields: Float[Array, "n 2"],
        key: PRNGKeyArray,
        ghosts: Float[Array, "2 2"] | None = None,
        *,
        neumann: Bool[ArrayLike, "2"] | None = None,
        dx: float | Float[ArrayLike, ""] | None = None,
    ) -> Float[Array, "n 2"]:
        """One time step of length ``dt`` of ONE ``(n, 2)`` field; returns ``(n, 2)``.

        The increments are dw = sqrt(dt) ``jr.normal(key, (n, 2))``: independent across cells
        and species. See ``step_with_increment`` for the update rule.
        """
        dw = jnp.sqrt(self.dt) * jr.normal(key, fields.shape, jnp.float32)
        return self.step_with_increment(fields, dw, ghosts, neumann=neumann, dx=dx)

    def advance(
        self,
        fields: Float[Array, "n 2"],
        key: PRNGKeyArray,
        num_steps: int,
        ghosts: Float[Array, "2 2"] | None = None,
        *,
        neumann: Bool[ArrayLike, "2"] | None = None,
        dx: float | Float[ArrayLike, ""] | None = None,
    ) -> Float[Array, "n 2"]:
        """``num_steps`` steps with fixed boundary values; returns the final ``(n, 2)`` field.

        Step t uses the key ``jr.split(key, num_steps)[t]`` (the same keys as ``simulate``).
        """
        num_steps = check_positive_int(num_steps, "num_steps")

        def body(x, k):
            return self.step(x, k, ghosts, neumann=neumann, dx=dx), None

        return jax.lax.scan(body, fields, jr.split(key, num_steps))[0]

    def simulate(
        self,
        fields: Float[ArrayLike, "n 2"],
        key: PRNGKeyArray,
        num_steps: int,
        save_every: int = 1,
    ) -> Float[Array, "s n 2"]:
        """A trajectory of ONE field with Neumann boundaries, saved every ``save_every`` steps.

        Step t (0-based) uses the key ``jr.split(key, num_steps)[t]``.

        Args:
            fields: ``(n, 2)`` initial state.
            key: PRNG key.
            num_steps: number of time steps (a Python int); must be a multiple of
                ``save_every``.
            save_every: save one state every this many steps.

        Returns:
            ``(num_steps // save_every + 1, n, 2)``: row 0 is the initial state, row s the
            state at time s * save_every * dt.
        """
        check_fields(fields)
        num_steps = check_positive_int(num_steps, "num_steps")
        save_every = check_positive_int(save_every, "save_every")
        if num_steps % save_every:
            raise ValueError(
                f"num_steps ({num_steps}) must be a multiple of save_every ({save_every})."
            )
        self.check_stability(fields.shape[0])
        keys = jr.split(key, num_steps).reshape(num_steps // save_every, save_every)

        def inner(x, k):
            return self.step(x, k), None

        def outer(x, ks):
            x = jax.lax.scan(inner, x, ks)[0]
            return x, x

        fields = jnp.asarray(fields, jnp.float32)
        _, saved = jax.lax.scan(outer, fields, keys)
        return jnp.concatenate([fields[None], saved], axis=0)

    def max_stable_dt(self, num_cells: int) -> float:
        """Largest dt for which explicit stepping of the diffusion part is stable.

        The Neumann 3-point Laplacian has eigenvalues in [-4, 0] (times 1/dx^2 in physical
        scaling); Euler and Heun are stable for dt |lambda| <= 2, so
        dt <= h^2 / (2 max(1, D)) with h = 1 (lattice) or 1/n (physical). Needs concrete D.
        """
        h2 = 1.0 if self.scaling == "lattice" else 1.0 / num_cells**2
        return 0.5 * h2 / max(1.0, float(np.max(np.asarray(self.diffusion))))

    def check_stability(self, num_cells: int) -> None:
        """Raise ``ValueError`` if a concrete dt exceeds ``max_stable_dt(num_cells)``."""
        if not (is_concrete(self.dt) and is_concrete(self.diffusion)):
            return
        limit = self.max_stable_dt(num_cells)
        dt = float(np.max(np.asarray(self.dt)))
        if dt > limit * (1.0 + 1e-6):
            raise ValueError(
                f"dt = {dt:g} exceeds the explicit stability limit {limit:.3g} of the diffusion "
                f"term ({self.scaling} scaling, {num_cells} cells, D = "
                f"{float(np.max(np.asarray(self.diffusion))):g}): the simulation would blow up. "
                "Reduce dt."
            )


# ---------------------------------------------------------------------------------- driver
def simulate_ensemble(
    system: PredatorPrey,
    initial: Float[ArrayLike, "B n 2"],
    key: PRNGKeyArray,
    num_steps: int,
    save_every: int = 1,
    *,
    batch_size: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """Simulate many trajectories on the host, in jitted vmapped batches.

    Trajectory b uses the key ``jr.fold_in(key, b)`` and ``system.simulate``, so the result
    does not depend on ``batch_size`` or on the number of devices (the batch axis is sharded
    over all local devices).

    Args:
        system: the SPDE.
        initial: ``(B, n, 2)`` finite initial fields.
        key: PRNG key.
        num_steps, save_every: as in ``PredatorPrey.simulate``.
        batch_size: trajectories per compiled call (memory: batch_size (S+1) n 2 floats).
        progress: show a tqdm progress bar.

    Returns:
        float32 NumPy array ``(B, num_steps // save_every + 1, n, 2)``.

    Raises:
        ValueError: bad shapes or arguments, non-finite initial fields, unstable dt.
        SimulationBlowUpError: a trajectory became non-finite; the message names the first
            such trajectory, its first non-finite saved step and the time.
    """
    from jmacro.sharding import map_in_batches

    check_fields(initial, "initial", batched=True)
    num_steps = check_positive_int(num_steps, "num_steps")
    save_every = check_positive_int(save_every, "save_every")
    batch_size = check_positive_int(batch_size, "batch_size")
    if num_steps % save_every:
        raise ValueError(
            f"num_steps ({num_steps}) must be a multiple of save_every ({save_every})."
        )
    num, num_cells = initial.shape[0], initial.shape[1]
    system.check_stability(num_cells)

    def one(x, index):
        return system.simulate(x, jr.fold_in(key, index), num_steps, save_every)

    return map_in_batches(
        one,
        num,
        initial,
        batch_size=batch_size,
        dtype=jnp.float32,
        desc="predator-prey",
        unit="traj",
        progress=progress,
        check=lambda paths, start: check_trajectories_finite(paths, system, save_every, start),
    )


def check_trajectories_finite(
    paths: np.ndarray, system: PredatorPrey, save_every: int = 1, offset: int = 0
) -> None:
    """Raise ``SimulationBlowUpError`` if any of the ``(B, S+1, n, 2)`` paths is non-finite,
    naming the first bad trajectory (index + ``offset``), saved step and time."""
    finite = np.isfinite(paths).all(axis=(2, 3))
    if finite.all():
        return
    traj = int(np.argmin(finite.all(axis=1)))
    saved = int(np.argmin(finite[traj]))
    dt = float(np.max(np.asarray(system.dt)))
    steps = saved * save_every
    raise SimulationBlowUpError(
        f"trajectory {traj + offset} blew up: its first non-finite saved step is {saved} "
        f"(after {steps} time steps, t = {steps * dt:.6g}; {int((~finite).any(axis=1).sum())} "
        f"of {len(paths)} trajectories in this batch are non-finite). Reduce dt "
        f"(now {dt:g}) or check the initial condition and parameters."
    )


__all__ = [
    "PredatorPrey",
    "SimulationBlowUpError",
    "cell_centres",
    "check_fields",
    "check_trajectories_finite",
    "euler_maruyama_step",
    "heun_step",
    "initial_condition",
    "laplacian_padded",
    "pad_fields",
    "simulate_ensemble",
]
