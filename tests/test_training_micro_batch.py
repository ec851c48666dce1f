"""Micro-batched training (``TrainConfig.micro_batch``, issue 12) takes the whole batch's step.

The micro-batch step sums n_i (loss_i, grad_i) over micro-batches (n_i samples each, D at a
time over the local devices, the rest on one) and divides by the batch size: for a loss that
is a mean over samples this is the whole batch's loss and gradient, summed in another order.
"Up to rounding" is measured against a float64 evaluation of the whole batch: the micro-batch
float32 gradients must be about as close to it as the whole-batch float32 ones are.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jmacro.models import make_spin_autoencoder
from jmacro.training import (
    TrainConfig,
    build_train_step,
    fit,
    init_opt_state,
    micro_batch_on_cpu,
    reconstruction_loss,
)

rbg_key = functools.partial(jr.key, impl="rbg")


def _spins(seed, count, side=16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    spins = np.where(rng.random((count, side, side)) < 0.5, 1, -1).astype(np.int8)
    spins[::3, : side // 2] = 1  # some uniform domains: ties in the max pools
    return spins


@pytest.fixture(scope="module")
def model():
    return make_spin_autoencoder(rbg_key(1), 16, 8, closure_dim=2, base_channels=4)


def test_micro_batch_step_takes_the_whole_batch_loss_and_gradient(model):
    # 21 samples in micro-batches of 4: whole groups over the devices and a remainder.
    batch = _spins(0, 21)
    config = TrainConfig(learning_rate=1e-3, batch_size=21, micro_batch=4)
    _, state, loss = build_train_step(reconstruction_loss, config)(
        model, init_opt_state(model, config), batch, rbg_key(2)
    )
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
        model64 = jax.tree.map(
            lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model
        )
        params, static = eqx.partition(model64, eqx.is_inexact_array)
        loss64, grad64 = jax.jit(
            jax.value_and_grad(
                lambda p: reconstruction_loss(eqx.combine(p, static), jnp.asarray(batch))
            )
        )(params)
        ref_loss, ref_grad = float(loss64), jax.tree.map(np.asarray, grad64)
    eps = np.finfo(np.float32).eps
    # The loss: a mean of 21 per-sample means of 256 terms each, in float32.
    assert abs(float(loss) - ref_loss) <= 64 * eps * ref_loss
    # Gradients, read from AMSGrad's first moment (mu = 0.1 g after one step from 0): float32
    # sums of per-sample terms no larger than the largest gradient entry, so each entry is
    # within a few float32 epsilons of that entry of the float64 gradient (the whole-batch
    # float32 step is within 2 here; a gradient summed over the devices would be off by 100%).
    leaves = jax.tree.leaves(ref_grad)
    tolerance = 32 * eps * max(np.abs(g).max() for g in leaves)
    (amsgrad, *_), _ = state
    for mu, ref in zip(jax.tree.leaves(amsgrad.mu), leaves, strict=True):
        np.testing.assert_allclose(np.asarray(mu, np.float64) / 0.1, ref, rtol=0, atol=tolerance)


def test_micro_batch_fit_decreases_the_loss(model):
    # 24 samples, batches of 12, micro-batches of 3: whole groups on 1, 2 or 4 devices.
    train, val = _spins(1, 24), _spins(2, 12)
    config = TrainConfig(
        learning_rate=3e-3, batch_size=12, num_epochs=3, show_progress=False, micro_batch=3
    )
    result = fit(model, reconstruction_loss, train, val, rbg_key(3), config)
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.history[-1].val_loss < result.history[0].val_loss
    # The model comes back on one device, as fit's callers expect.
    arrays = jax.tree.leaves(eqx.filter(result.model, eqx.is_array))
    assert len({d for a in arrays for d in a.devices()}) == 1


def test_micro_batch_settings():
    with pytest.raises(ValueError, match="micro_batch"):
        TrainConfig(micro_batch=0)
    with pytest.raises(ValueError, match="device_epochs"):
        TrainConfig(micro_batch=8, device_epochs=True)
    expected = 8 if jax.default_backend() == "cpu" else None
    assert micro_batch_on_cpu(8) == expected
