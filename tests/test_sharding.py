"""Sharding the batch axis: sharded results equal unsharded ones bit for bit.

Several devices are simulated on the CPU with ``--xla_force_host_platform_device_count=4``,
which must be set before JAX initialises, so those tests run in a fresh Python process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jmacro.sharding import (
    BATCH_AXIS,
    batch_mesh,
    pad_batch,
    shard_batch,
    sharded_vmap,
)


def flip_some(spins, key, probability):
    """Flip each spin with ``probability``; return the new spins and the old magnetisation."""
    flips = jr.uniform(key, spins.shape) < probability
    return jnp.where(flips, -spins, spins), jnp.mean(spins.astype(jnp.float32))


def _batch(batch: int, side: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    spins = np.where(rng.random((batch, side, side)) < 0.5, 1, -1).astype(np.int8)
    return spins, jr.split(jr.key(seed), batch)


# ------------------------------------------- this process's devices (one per core by default)
def test_batch_mesh_spans_the_local_devices():
    mesh = batch_mesh()
    assert mesh.axis_names == (BATCH_AXIS,)
    assert list(mesh.devices.flat) == jax.local_devices()
    with pytest.raises(ValueError, match="at least one device"):
        batch_mesh([])


def test_sharded_vmap_equals_vmap_on_one_device():
    spins, keys = _batch(5)
    probability = jnp.float32(0.3)
    expected = jax.jit(jax.vmap(flip_some, in_axes=(0, 0, None)))(spins, keys, probability)
    result = sharded_vmap(flip_some, in_axes=(0, 0, None))(spins, keys, probability)
    for got, want in zip(result, expected, strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    assert np.any(np.asarray(result[0]) != spins)  # it did something
    assert isinstance(result[0].sharding, NamedSharding)
    # An even batch stays split over the devices (jmacro gives one CPU device per core); an
    # uneven one is padded and sliced back, which leaves it unevenly placed.
    even = jax.device_count() * 2
    spins, keys = _batch(even)
    result = sharded_vmap(flip_some, in_axes=(0, 0, None))(spins, keys, probability)
    assert result[0].sharding.spec == PartitionSpec(BATCH_AXIS)


def test_pad_batch_repeats_the_last_element():
    spins, keys = _batch(5)
    (padded_spins, padded_keys), num_pad = pad_batch((spins, keys), 4)
    assert num_pad == 3 and padded_spins.shape == (8, 8, 8) and padded_keys.shape == (8,)
    np.testing.assert_array_equal(padded_spins[:5], spins)
    np.testing.assert_array_equal(padded_spins[5:], np.repeat(spins[-1:], 3, axis=0))
    np.testing.assert_array_equal(
        jr.key_data(padded_keys), jr.key_data(keys[np.array([0, 1, 2, 3, 4, 4, 4, 4])])
    )
    same, none = pad_batch(spins, 5)
    assert none == 0 and same is spins
    with pytest.raises(ValueError, match="empty batch"):
        pad_batch(np.zeros((0, 3)), 4)


def test_shard_batch_places_every_leaf():
    spins, keys = _batch(3 * jax.device_count())
    placed = shard_batch({"spins": spins, "keys": keys})
    for leaf in jax.tree.leaves(placed):
        assert leaf.sharding.spec == PartitionSpec(BATCH_AXIS)
    np.testing.assert_array_equal(placed["spins"], spins)


@pytest.mark.parametrize(
    ("in_axes", "args", "message"),
    [
        (0, (np.zeros((3, 2)), np.zeros((4, 2))), "disagree on the batch size: \\[3, 4\\]"),
        (None, (np.zeros((3, 2)),), "at least one batched argument"),
        ((0, 1), (np.zeros((3, 2)), np.zeros((3, 2))), "entries must be 0 or None"),
        ((0,), (np.zeros((3, 2)), np.zeros((3, 2))), "one entry per positional argument"),
        (0, (np.zeros((3, 2)), 1.0), "needs a leading batch axis"),
    ],
)
def test_sharded_vmap_explains_bad_arguments(in_axes, args, message):
    with pytest.raises(ValueError, match=message):
        sharded_vmap(lambda *xs: xs[0], in_axes=in_axes)(*args)


# ---------------------------------------------------------------------- several devices
CHILD = r"""
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"  # before importing jax
os.environ["JAX_PLATFORMS"] = "cpu"
import jax, jax.numpy as jnp, jax.random as jr, numpy as np
import jmacro
from jmacro.sharding import shard_batch, sharded_vmap

assert jax.local_device_count() == 4, jax.local_devices()

def batch(size, side=8):
    rng = np.random.default_rng(size)
    spins = np.where(rng.random((size, side, side)) < 0.5, 1, -1).astype(np.int8)
    return spins, jr.split(jr.key(size), size)

def describe(out, ref):
    leaves, ref_leaves = jax.tree.leaves(out), jax.tree.leaves(ref)
    equal = [np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(leaves, ref_leaves)]
    return {
        "equal": len(leaves) == len(ref_leaves) and all(equal),
        "changed": bool(np.any(np.asarray(leaves[0]) != batch(leaves[0].shape[0])[0])),
        "devices": len(leaves[0].sharding.device_set),
        "spec": list(leaves[0].sharding.spec),
        "shard_shapes": sorted(list(s.data.shape) for s in leaves[0].addressable_shards),
    }

report = {}
if sys.argv[1] == "flip":
    def fn(spins, key, probability):
        flips = jr.uniform(key, spins.shape) < probability
        return jnp.where(flips, -spins, spins), jnp.mean(spins.astype(jnp.float32))
    sharded = sharded_vmap(fn, in_axes=(0, 0, None))
    plain = jax.jit(jax.vmap(fn, in_axes=(0, 0, None)))
    for size in (8, 6):
        spins, keys = batch(size)
        report[size] = describe(sharded(spins, keys, 0.3), plain(spins, keys, 0.3))
    try:
        shard_batch(batch(6))
    except ValueError as err:
        report["shard_batch_error"] = str(err)
else:
    model = jmacro.systems.GlauberIsing(2.5, 0.1)
    fn = lambda s, k: model.advance_time(s, k, 0.5)
    sharded = sharded_vmap(fn)  # one compilation serves 8 and 6 (padded to 8)
    for size in (8, 6):
        spins, keys = batch(size)
        report[size] = describe(sharded(spins, keys), jax.jit(jax.vmap(fn))(spins, keys))
print("REPORT" + json.dumps(report))
"""


def _run_child(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("REPORT"))
    return json.loads(line.removeprefix("REPORT"))


def _check_sharded_equals_unsharded(report: dict) -> None:
    divisible, uneven = report["8"], report["6"]
    assert divisible["equal"] and divisible["changed"]
    # Really spread over the 4 devices, two lattices each.
    assert divisible["devices"] == 4 and divisible["spec"] == ["batch"]
    assert divisible["shard_shapes"] == [[2, 8, 8]] * 4
    assert uneven["equal"] and uneven["changed"]


def test_sharded_equals_unsharded_on_four_devices():
    report = _run_child("flip")
    _check_sharded_equals_unsharded(report)
    assert "batch size 6 does not divide by the 4 devices" in report["shard_batch_error"]


@pytest.mark.slow  # compiling advance_time three times takes 10-30 s on 2 CPU cores
def test_sharded_glauber_ising_equals_unsharded_on_four_devices():
    _check_sharded_equals_unsharded(_run_child("ising"))


MULTI_PROCESS_CHILD = r"""
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"  # before importing jax
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
process_id, port = int(sys.argv[1]), sys.argv[2]
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
import jax.numpy as jnp, jax.random as jr, numpy as np
from jax.experimental import multihost_utils
from jmacro.sharding import batch_mesh, sharded_vmap

def fn(spins, key, probability):
    flips = jr.uniform(key, spins.shape) < probability
    return jnp.where(flips, -spins, spins)

mesh = batch_mesh(jax.devices())
sharded = sharded_vmap(fn, in_axes=(0, 0, None), mesh=mesh)
plain = jax.jit(jax.vmap(fn, in_axes=(0, 0, None)))  # this process's first device only
report = {"global_devices": mesh.devices.size}
for size in (8, 6):
    rng = np.random.default_rng(size)  # the same global batch in every process
    spins = np.where(rng.random((size, 8, 8)) < 0.5, 1, -1).astype(np.int8)
    keys = jr.split(jr.key(size), size)
    out = sharded(spins, keys, 0.3)
    full = np.asarray(multihost_utils.process_allgather(out, tiled=True))
    report[size] = {
        "equal": bool(np.array_equal(full, np.asarray(plain(spins, keys, 0.3)))),
        "changed": bool(np.any(full != spins)),
        "local_shards": len(out.addressable_shards),
    }
print("REPORT" + json.dumps(report))
"""


@pytest.mark.slow  # two JAX processes talking over a socket: 10-20 s on 2 CPU cores
def test_sharded_over_two_processes_equals_unsharded():
    import socket

    with socket.socket() as sock:  # a free port for the coordinator
        sock.bind(("localhost", 0))
        port = str(sock.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MULTI_PROCESS_CHILD, str(i), port],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-4000:]
        line = next(line for line in stdout.splitlines() if line.startswith("REPORT"))
        report = json.loads(line.removeprefix("REPORT"))
        assert report["global_devices"] == 4
        for size in ("8", "6"):
            assert report[size]["equal"] and report[size]["changed"], (size, report)
        assert report["8"]["local_shards"] == 2  # each process holds its 2 devices' shards


# ------------------------------------------------------------------- default CPU devices
DEVICES_CHILD = (
    "import os, jmacro, jax, jmacro._devices as d; "
    "print(jax.device_count(), d.available_cores(), os.environ.get('XLA_FLAGS', ''))"
)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "cores"),  # one CPU device per available core
        ({"JMACRO_CPU_DEVICES": "1"}, 1),
        ({"JMACRO_CPU_DEVICES": "3"}, 3),
        ({"XLA_FLAGS": "--xla_force_host_platform_device_count=5"}, 5),  # the user's wins
    ],
)
def test_importing_jmacro_gives_one_cpu_device_per_core(env, expected):
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JMACRO_CPU_DEVICES")}
    proc = subprocess.run(
        [sys.executable, "-c", DEVICES_CHILD],
        env={**base, "JAX_PLATFORMS": "cpu", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    count, cores, _ = proc.stdout.split(" ", 2)
    assert int(count) == (int(cores) if expected == "cores" else expected)


def test_a_bad_device_count_is_refused(monkeypatch):
    from jmacro import _devices

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("JMACRO_CPU_DEVICES", "two")
    with pytest.raises(ValueError, match="JMACRO_CPU_DEVICES must be a positive integer"):
        _devices.configure_host_devices()
