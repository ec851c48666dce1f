"""A behaviour change must bump its version (``jmacro/_versions.py``), so caches rebuild.

Each part of the library that produces cached stages has a probe: a few calls on fixed inputs
and keys. The digest of the probe's outputs is recorded per version below. If a part's outputs
change while its version stays, the test fails and says to bump the version (which rebuilds
every stage that depends on the part) and to record the new digest. Floats are rounded to 5
decimals before hashing, so a digest changes with behaviour, not with the last bit of a
float32 reduction.
"""

import hashlib

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jmacro._versions import VERSIONS
from jmacro.geometry import Segments1D, SquareTiling2D
from jmacro.metrics import diverged_fraction, mmd_per_time, relative_squared_error
from jmacro.models import build_model, model_hyperparams
from jmacro.pipelines import get_experiment
from jmacro.pipelines.base import Scale, lambda_variants
from jmacro.pipelines.runner import STAGE_CODE, autoencoder_split, variant_key
from jmacro.rollout import rollout
from jmacro.scale import (
    HierarchicalUpsampling,
    LocalRelax,
    PartialEvolution,
    evolve_patches,
    upsample_dataset,
)
from jmacro.simulate import random_trajectories, trajectories
from jmacro.systems import CurieWeiss, GlauberIsing, PredatorPrey
from jmacro.training import (
    PAIR_METHODS,
    IncrementPairs,
    TrainConfig,
    encode_configurations,
    encode_partial_evolution_pairs,
    fit,
    increment_loss_fn,
)

# part -> {version: digest of the probe's outputs at that version} (training 1 predates the
# probe's partial-evolution pairs)
RECORDED = {
    "systems": {1: "8b05c9c2acb2bddd", 2: "874e45d06786bc99"},
    "simulate": {1: "f5719e30900663d2", 2: "caba2d11d70b42c8"},
    "scale": {1: "e77fb8f9176e4187", 2: "578bfe148303010d"},
    "models": {1: "d37857cf391e72ab", 2: "70513654335c7741"},
    "training": {1: "390b5076f8decb36", 2: "f7ed030d0d56e950"},
    "rollout": {1: "692f3636c6cf4842"},
    "metrics": {1: "e3987876a6452ead"},
    "runner": {3: "ca4899f6a3d8b5d9"},
}


def _digest(outputs) -> str:
    sha = hashlib.sha256()
    for x in jax.tree.leaves(eqx.filter(outputs, eqx.is_array_like)):
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.floating):
            x = np.round(x.astype(np.float64), 5) + 0.0  # + 0.0: -0.0 and 0.0 hash alike
        sha.update(f"{x.shape}{x.dtype.kind}".encode())
        sha.update(np.ascontiguousarray(x).tobytes())
    return sha.hexdigest()[:16]


def _spins(key, shape, m=0.2):
    return GlauberIsing(2.5, 0.1).init_state(key, shape, m)


def _systems():
    ising, cw, spde = GlauberIsing(2.5, 0.1), CurieWeiss(1.1, 0.1), PredatorPrey()
    s = _spins(jr.key(0), (8, 8))
    fields = spde.init_state(jr.key(0), 40, k=0.1, m=0.5)
    return [
        ising.advance(s, jr.key(1), 1.0),
        ising.advance_events(s, jr.key(2)),
        cw.advance(s, jr.key(1), 1.0),
        cw.advance_events(s, jr.key(2)),
        spde.advance(fields, jr.key(3), 5 * spde.time_step()),
    ]


def _simulate():
    initial = jnp.stack([_spins(jr.key(i), (8, 8)) for i in range(2)])
    return [
        trajectories(GlauberIsing(2.5, 0.1), initial, jr.key(4), 3, 0.5),
        random_trajectories(CurieWeiss(1.1, 0.1), jr.key(5), 2, (8, 8), 3),
    ]


def _scale():
    ising, spde = GlauberIsing(2.5, 0.1), PredatorPrey()
    snapshots = np.stack([np.asarray(_spins(jr.key(i), (16, 16))) for i in range(3)])
    fields = np.stack([np.asarray(spde.init_state(jr.key(0), 40, k=0.1, m=m)) for m in (0.45, 0.5)])
    relax = LocalRelax(SquareTiling2D(8, stride=4), "halo", duration=0.5)
    return [
        evolve_patches(
            ising,
            snapshots,
            jr.key(6),
            PartialEvolution(SquareTiling2D(8), "halo", duration=0.5),
            progress=False,
        ),
        evolve_patches(
            spde, fields, jr.key(7), PartialEvolution(Segments1D(5), num_events=2), progress=False
        ),
        upsample_dataset(
            ising,
            snapshots[:, :8, :8],
            jr.key(8),
            HierarchicalUpsampling(16, 2, relax, num_random=1),
            progress=False,
        ),
    ]


def _autoencoder():
    hyper = model_hyperparams(
        "spin_autoencoder",
        lattice_shape=[16, 16],
        patch_shape=[8, 8],
        closure_dim=2,
        known="ising",
        base_channels=4,
    )
    return build_model(hyper, jr.key(9))


def _sde():
    hyper = model_hyperparams("latent_sde", latent_dim=2, diffusion_mode="full")
    return build_model(hyper, jr.key(10))


def _models():
    spins = np.stack([np.asarray(_spins(jr.key(i), (16, 16))) for i in range(3)])
    sde = _sde()
    return [encode_configurations(_autoencoder(), spins), jax.tree.leaves(sde)]


def _pairs(n=64):
    rng = np.random.default_rng(0)
    z0 = rng.normal(size=(n, 2)).astype(np.float32)
    z1 = (0.9 * z0 + 0.1 * rng.normal(size=(n, 2))).astype(np.float32)
    return IncrementPairs(z0, z1, np.full(n, 0.1, np.float32))


def _partial_pairs():
    snapshots = np.stack([np.asarray(_spins(jr.key(i), (16, 16))) for i in range(3)])
    evolved = np.stack([np.asarray(_spins(jr.key(20 + i), (8, 8))) for i in range(3)])
    index, dt = np.array([0, 1, 3]), np.full(3, 0.1, np.float32)
    return [
        encode_partial_evolution_pairs(_autoencoder(), snapshots, index, evolved, dt, method=m)
        for m in PAIR_METHODS
    ]


def _training():
    pairs, sde = _pairs(), _sde()
    loss = increment_loss_fn(4.0, 1e-4)(sde, pairs, None)
    config = TrainConfig(learning_rate=1e-3, batch_size=16, num_epochs=2, show_progress=False)
    trained = fit(sde, increment_loss_fn(1.0, 1e-4), pairs, pairs, jr.key(11), config).model
    return [loss, jax.tree.leaves(trained), _partial_pairs()]


def _rollout():
    return rollout(_sde(), jnp.zeros((4, 2)), jnp.linspace(0.0, 1.0, 5), jr.key(12))


def _runner():
    scale = Scale("ns64", 8, 4, 64.0, 8)
    exp = get_experiment("ising", "smoke")
    keys = [variant_key(exp, scale, v) for v in lambda_variants((1.0,), (0, 1))]
    splits = [autoencoder_split(100, 30, 0, scale), autoencoder_split(50, None, 1, scale)]
    return [*splits, *map(jr.key_data, keys)]


def _metrics():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 8, 5, 2)).astype(np.float32)
    return [relative_squared_error(a, b + 3), mmd_per_time(a, b), diverged_fraction(a * 50, b)]


PROBES = {
    "systems": _systems,
    "simulate": _simulate,
    "scale": _scale,
    "models": _models,
    "training": _training,
    "rollout": _rollout,
    "metrics": _metrics,
    "runner": _runner,
}


def test_every_versioned_part_has_a_probe_and_every_stage_names_known_parts():
    assert set(PROBES) == set(VERSIONS) == set(RECORDED)
    assert {part for parts in STAGE_CODE.values() for part in parts} <= set(VERSIONS)


@pytest.mark.parametrize("part", sorted(PROBES))
def test_a_behaviour_change_bumps_the_version(part):
    digest, version = _digest(PROBES[part]()), VERSIONS[part]
    recorded = RECORDED[part]
    assert version in recorded, (
        f"record the digest of {part!r} version {version} in RECORDED: {{{version}: {digest!r}}}"
    )
    assert recorded[version] == digest, (
        f"the outputs of {part!r} changed (digest {digest}, recorded {recorded[version]}) but "
        f"its version is still {version}. If the change is intended, bump VERSIONS[{part!r}] "
        f"in jmacro/_versions.py to {version + 1} (stages that run it will rebuild) and record "
        f"{{{version + 1}: {digest!r}}} in RECORDED; otherwise it is a regression."
    )
