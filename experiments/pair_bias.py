"""Partial-evolution pair bias on the real simulators: how far is dt from Theorem 1's limit?

Theorem 1 (partial evolution of ONE patch of a large snapshot gives an unbiased drift and a
K-scaled diffusion) holds as dt -> 0. This script measures, on the library's own simulators and
partial-evolution code, the two ratios

    r_mean = K E[dm_part] / E[dm_full]          (-> 1 as dt -> 0)
    r_var  = K^2 Var(dm_part) / Var(dm_full)    (-> K as dt -> 0; reported as r_var / K)

where, for a large L x L snapshot X with (exact) magnetisation m0 and i.i.d. positions of its
up spins,

- dm_full = m(X evolved for dt by the whole periodic system) - m(X)  (``system.advance``);
- dm_part = change of the full-lattice magnetisation when ONE patch of side l (K = (L/l)^2,
  index uniform) is evolved for dt with the pipelines' boundary (``SquareTiling2D(l)
  .patch_with_boundary`` + ``system.patch_step``, which ``jmacro.scale.partial.advance_patch``
  calls for a fixed duration: the body of ``evolve_patch``): Curie-Weiss ``MeanField`` (the
  patch feels the whole system's magnetisation), Ising ``FrozenHalo`` (the patch sees its
  frozen real neighbours).

Each snapshot gets one full evolution and TWO partial evolutions of two different patches I != J
(each uniform on its own), all from the same X with independent keys. r_mean and r_var use both
partial increments (the snapshot is the statistical unit, so their correlation is accounted
for); the correlation corr(dm_part_I, dm_part_J) says how much new information a second patch
of the same snapshot brings. Standard errors: the delta method (influence functions over
snapshots). The linear-in-dt extrapolation of r_mean to dt = 0 is a weighted least-squares fit.

Fixed-magnetisation snapshots (a random permutation of exactly round(N (1 + m0) / 2) up spins)
remove the between-snapshot spread of the drift of m, which the learned SDE conditions on.

Usage::

    .venv/bin/python experiments/pair_bias.py                # the docs/pair_bias.md table
    .venv/bin/python experiments/pair_bias.py --scale 0.1    # 10x fewer samples (a smoke run)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from jmacro.geometry import FrozenHalo, MeanField, SquareTiling2D
from jmacro.systems import CurieWeiss, GlauberIsing


@dataclasses.dataclass(frozen=True)
class Setting:
    """One system at one patch size: the boundary the pipelines use, the snapshot's m0."""

    name: str
    side: int  # L
    patch: int  # l
    magnetisation: float  # m0 of the snapshots
    relax: float = 0.0  # sweeps of whole-system dynamics applied to the snapshots first

    def system(self):
        if self.name == "curie_weiss":
            return CurieWeiss(temperature=1.1, field=0.1)
        return GlauberIsing(temperature=2.5, field=0.1)

    @property
    def boundary(self):
        return MeanField if self.name == "curie_weiss" else FrozenHalo

    @property
    def num_patches(self) -> int:
        return (self.side // self.patch) ** 2


def fixed_m_snapshots(key, num: int, side: int, magnetisation: float) -> jax.Array:
    """``num`` (side, side) int8 snapshots, each a random permutation of exactly
    round(N (1 + m0) / 2) up spins (N = side^2)."""
    size = side * side
    num_up = round(size * (1.0 + magnetisation) / 2.0)
    base = jnp.where(jnp.arange(size) < num_up, 1, -1).astype(jnp.int8)
    keys = jr.split(key, num)
    return jax.vmap(lambda k: jr.permutation(k, base).reshape(side, side))(keys)


def _partial_change(setting: Setting, x, index, key, dt):
    """Change of the lattice magnetisation when patch ``index`` of ``x`` evolves for ``dt``
    with the setting's boundary (``advance_patch(..., duration=dt)``; ``patch_step`` takes a
    traced dt, so one compiled program serves every dt)."""
    patch, boundary = SquareTiling2D(setting.patch).patch_with_boundary(x, index, setting.boundary)
    after, _ = setting.system().patch_step(patch, key, dt, boundary)
    change = after.astype(jnp.int32).sum() - patch.astype(jnp.int32).sum()
    return change / setting.side**2


@functools.partial(jax.jit, static_argnums=(0, 3))
def _increments(setting: Setting, key, dt, num: int):
    """``(dm_full (num,), dm_part (num, 2))`` for ``num`` fresh snapshots."""
    system = setting.system()
    num_patches = setting.num_patches
    size = setting.side**2
    key_snap, key_run = jr.split(key)
    snaps = fixed_m_snapshots(key_snap, num, setting.side, setting.magnetisation)
    if setting.relax:
        # Relaxed snapshots: correlated domain walls, not i.i.d. (their m then varies).
        keys = jr.split(jr.fold_in(key_snap, 1), num)
        snaps = jax.vmap(lambda x, k: system.advance(x, k, setting.relax))(snaps, keys)

    def one(x, k):
        k_full, k_i, k_j, k_pi, k_pj = jr.split(k, 5)
        m0 = x.astype(jnp.int32).sum()
        full = system.advance(x, k_full, dt)
        d_full = (full.astype(jnp.int32).sum() - m0) / size
        first = jr.randint(k_i, (), 0, num_patches)
        second = (first + 1 + jr.randint(k_j, (), 0, num_patches - 1)) % num_patches
        pairs = ((first, k_pi), (second, k_pj))
        return d_full, jnp.stack([_partial_change(setting, x, i, k, dt) for i, k in pairs])

    return jax.vmap(one)(snaps, jr.split(key_run, num))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _patch_repeats(setting: Setting, key, dt, num: int):
    """``(num, 3)`` partial increments per snapshot: patch I, a different patch J, and patch I
    again with a fresh key (what drawing patches independently per evolution can give)."""
    num_patches = setting.num_patches
    key_snap, key_run = jr.split(key)
    snaps = fixed_m_snapshots(key_snap, num, setting.side, setting.magnetisation)

    def one(x, k):
        k_i, k_j, k_a, k_b, k_c = jr.split(k, 5)
        first = jr.randint(k_i, (), 0, num_patches)
        second = (first + 1 + jr.randint(k_j, (), 0, num_patches - 1)) % num_patches
        pairs = ((first, k_a), (second, k_b), (first, k_c))
        return jnp.stack([_partial_change(setting, x, i, k, dt) for i, k in pairs])

    return jax.vmap(one)(snaps, jr.split(key_run, num))


def correlation(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Pearson correlation of paired samples and its delta-method standard error."""
    da, db = a - a.mean(), b - b.mean()
    va, vb, cab = (da**2).mean(), (db**2).mean(), (da * db).mean()
    corr = cab / np.sqrt(va * vb)
    psi = (da * db - cab) / np.sqrt(va * vb) - 0.5 * corr * ((da**2 - va) / va + (db**2 - vb) / vb)
    return float(corr), float(psi.std(ddof=1) / np.sqrt(len(a)))


def patch_correlations(setting: Setting, key, dt: float, num: int, batch: int = 4096):
    """``{"different": (corr, se), "same": (corr, se)}``: the correlation of the increments of
    two different patches of one snapshot, and of two evolutions of the same patch."""
    parts = np.concatenate(
        [
            np.asarray(
                _patch_repeats(
                    setting, jr.fold_in(key, b), jnp.float32(dt), min(batch, num - start)
                ),
                np.float64,
            )
            for b, start in enumerate(range(0, num, batch))
        ]
    )
    return {
        "different": correlation(parts[:, 0], parts[:, 1]),
        "same": correlation(parts[:, 0], parts[:, 2]),
    }


def increments(setting: Setting, key, dt: float, num: int, batch: int = 4096):
    """Host arrays ``(dm_full (num,), dm_part (num, 2))``; batch b uses ``fold_in(key, b)``."""
    fulls, parts = [], []
    for b, start in enumerate(range(0, num, batch)):
        size = min(batch, num - start)
        full, part = _increments(setting, jr.fold_in(key, b), jnp.float32(dt), size)
        fulls.append(np.asarray(full, np.float64))
        parts.append(np.asarray(part, np.float64))
    return np.concatenate(fulls), np.concatenate(parts)


def ratios(full: np.ndarray, part: np.ndarray, num_patches: int) -> dict[str, float]:
    """r_mean, r_var / K, corr(part I, part J) and their delta-method standard errors.

    ``full``: (n,) full increments; ``part``: (n, 2) the two partial increments of each
    snapshot. Influence functions are per snapshot, so the two patches' correlation counts.
    """
    n = len(full)
    k = num_patches
    mu_f, mu_p = full.mean(), part.mean()
    dev_f, dev_p = full - mu_f, part - mu_p
    var_f, var_p = (dev_f**2).mean(), (dev_p**2).mean()
    r_mean = k * mu_p / mu_f
    psi_mean = k * dev_p.mean(axis=1) / mu_f - r_mean * dev_f / mu_f
    r_var = k * var_p / var_f  # = (K^2 Var(part) / Var(full)) / K
    psi_var = k * ((dev_p**2).mean(axis=1) - var_p) / var_f - r_var * (dev_f**2 - var_f) / var_f
    cov_pq = (dev_p[:, 0] * dev_p[:, 1]).mean()
    corr = cov_pq / var_p
    psi_corr = (dev_p[:, 0] * dev_p[:, 1] - cov_pq) / var_p - corr * (
        (dev_p**2).mean(axis=1) - var_p
    ) / var_p

    def se(psi):
        return float(psi.std(ddof=1) / np.sqrt(n))

    return {
        "r_mean": float(r_mean),
        "r_mean_se": se(psi_mean),
        "r_var_over_k": float(r_var),
        "r_var_over_k_se": se(psi_var),
        "corr": float(corr),
        "corr_se": se(psi_corr),
        "drift_full": float(mu_f),
        "n": n,
    }


def extrapolate(dts, values, ses, degree: int = 1) -> tuple[float, float, float, float]:
    """Weighted least-squares polynomial in dt of ``degree`` (1: the line a + b dt);
    ``(a, se_a, b, se_b)``: the value at dt = 0 and the linear coefficient, with their SEs."""
    dts, values, ses = (np.asarray(v, np.float64) for v in (dts, values, ses))
    design = np.stack([dts**p for p in range(degree + 1)], axis=1)
    weights = 1.0 / ses**2
    cov = np.linalg.inv(design.T @ (weights[:, None] * design))
    coef = cov @ design.T @ (weights * values)
    return float(coef[0]), float(np.sqrt(cov[0, 0])), float(coef[1]), float(np.sqrt(cov[1, 1]))


# m0: Curie-Weiss drift b(0.8) = tanh(0.9 / 1.1) - 0.8 = -0.126; i.i.d. Ising spins have a
# small drift at every m0 (+0.058 at m0 = 0.5, ~0 at 0.8, where the iid domain walls balance
# the field), so the Ising snapshots use m0 = 0.5.
SETTINGS = (
    Setting("curie_weiss", 32, 16, 0.8),
    Setting("curie_weiss", 32, 8, 0.8),
    Setting("ising", 32, 16, 0.5),
    Setting("ising", 32, 8, 0.5),
)
# Supplement (--relaxed): Ising snapshots with correlated domain walls, i.i.d. at m0 = 0.95
# then relaxed for one sweep by the whole system (m ~ 0.9, drift -0.028 per sweep).
RELAXED_SETTINGS = (
    Setting("ising", 32, 16, 0.95, relax=1.0),
    Setting("ising", 32, 8, 0.95, relax=1.0),
)
DTS = (1.0, 0.5, 0.25, 0.1)
# Snapshots per (system, dt) at --scale 1: more at small dt, where the relative noise of the
# increments grows as 1 / sqrt(dt), and for Ising, whose drift is smaller.
NUM_SAMPLES = {
    "curie_weiss": {1.0: 40_000, 0.5: 60_000, 0.25: 100_000, 0.1: 200_000},
    "ising": {1.0: 100_000, 0.5: 150_000, 0.25: 250_000, 0.1: 400_000},
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the sample counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the Markdown tables here")
    parser.add_argument(
        "--systems", nargs="+", default=["curie_weiss", "ising"], choices=["curie_weiss", "ising"]
    )
    parser.add_argument(
        "--relaxed", action="store_true", help="the relaxed-snapshot Ising supplement instead"
    )
    parser.add_argument(
        "--correlations",
        action="store_true",
        help="only the same-patch / different-patch correlation table",
    )
    args = parser.parse_args(argv)
    if args.correlations:
        text = correlation_table(args)
        print(text)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
        return
    settings = RELAXED_SETTINGS if args.relaxed else SETTINGS

    rows, fits = [], []
    start_all = time.perf_counter()
    for s_index, setting in enumerate(settings, start=len(SETTINGS) if args.relaxed else 0):
        if setting.name not in args.systems:
            continue
        per_dt = []
        for d_index, dt in enumerate(DTS):
            num = max(int(NUM_SAMPLES[setting.name][dt] * args.scale), 200)
            key = jr.fold_in(jr.fold_in(jr.key(args.seed), s_index), d_index)
            start = time.perf_counter()
            full, part = increments(setting, key, dt, num)
            stats = ratios(full, part, setting.num_patches)
            stats["seconds"] = time.perf_counter() - start
            rows.append((setting, dt, stats))
            per_dt.append((dt, stats))
            print(_row(setting, dt, stats), flush=True)
        columns = (
            [d for d, _ in per_dt],
            [s["r_mean"] for _, s in per_dt],
            [s["r_mean_se"] for _, s in per_dt],
        )
        fit, quadratic = extrapolate(*columns), extrapolate(*columns, degree=2)
        fits.append((setting, fit, quadratic))
        print(f"  r_mean(dt) = {fit[0]:.4f} +- {fit[1]:.4f}  + ({fit[2]:.4f} +- {fit[3]:.4f}) dt")
    total = time.perf_counter() - start_all
    text = markdown(rows, fits, args, total)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


def correlation_table(args) -> str:
    """Correlations of patch increments of one snapshot at the pipelines' pair durations (and
    dt = 1): two different patches, and the same patch evolved twice with fresh keys."""
    lines = [
        "| system | K | dt (sweeps) | corr(patch I, patch J != I) | corr(patch I, patch I again) "
        "| snapshots |",
        "|---|---|---|---|---|---|",
    ]
    num = max(int(100_000 * args.scale), 200)
    for s_index, setting in enumerate(SETTINGS):
        for dt in (0.1, 1.0) if setting.name == "curie_weiss" else (0.5, 1.0):
            key = jr.fold_in(jr.fold_in(jr.key(args.seed), 100 + s_index), int(dt * 10))
            out = patch_correlations(setting, key, dt, num)
            (cd, sd), (cs, ss) = out["different"], out["same"]
            line = (
                f"| {_label(setting)} | {setting.num_patches} | {dt:g} | {cd:+.4f} ± {sd:.4f} "
                f"| {cs:+.4f} ± {ss:.4f} | {num} |"
            )
            print(line, flush=True)
            lines.append(line)
    return "\n".join(lines) + "\n"


def _label(setting: Setting) -> str:
    kind = "Curie-Weiss (MeanField)" if setting.name == "curie_weiss" else "Ising (FrozenHalo)"
    relaxed = f", relaxed {setting.relax:g} sweeps" if setting.relax else ""
    return f"{kind}, L={setting.side}, l={setting.patch}, m0={setting.magnetisation:g}{relaxed}"


def _row(setting: Setting, dt: float, s: dict) -> str:
    return (
        f"{_label(setting):40s} K={setting.num_patches:3d} dt={dt:<5} "
        f"r_mean={s['r_mean']:.4f}+-{s['r_mean_se']:.4f} "
        f"r_var/K={s['r_var_over_k']:.4f}+-{s['r_var_over_k_se']:.4f} "
        f"corr={s['corr']:+.4f}+-{s['corr_se']:.4f} n={s['n']} ({s['seconds']:.0f} s)"
    )


def markdown(rows, fits, args, total_seconds: float) -> str:
    lines = [
        "| system | K | dt (sweeps) | r_mean | r_var / K | corr(patch I, patch J) "
        "| E[dm_full] | snapshots |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setting, dt, s in rows:
        lines.append(
            f"| {_label(setting)} | {setting.num_patches} | {dt:g} | "
            f"{s['r_mean']:.4f} ± {s['r_mean_se']:.4f} | "
            f"{s['r_var_over_k']:.4f} ± {s['r_var_over_k_se']:.4f} | "
            f"{s['corr']:+.4f} ± {s['corr_se']:.4f} | {s['drift_full']:+.5f} | {s['n']} |"
        )
    lines += [
        "",
        "Extrapolation of r_mean to dt = 0 (weighted least squares over the four dt; the "
        "quadratic fit checks the line's curvature bias):",
        "",
        "| system | K | linear: r_mean at dt = 0 | linear: slope | quadratic: r_mean at dt = 0 |",
        "|---|---|---|---|---|",
    ]
    for setting, (a, se_a, b, se_b), quadratic in fits:
        lines.append(
            f"| {_label(setting)} | {setting.num_patches} | {a:.4f} ± {se_a:.4f} | "
            f"{b:+.4f} ± {se_b:.4f} | {quadratic[0]:.4f} ± {quadratic[1]:.4f} |"
        )
    lines += [
        "",
        f"Seed {args.seed}, sample scale {args.scale:g}, total run time {total_seconds:.0f} s "
        f"(jax {jax.__version__}, {jax.devices()[0].platform}).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
