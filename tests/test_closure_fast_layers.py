"""The spin networks' faster layers (issue 12) compute what the layers as first written do.

The encoder normalises and activates after pooling (``closure._norm_leaky_pool``): the same
values bit for bit (max pooling commutes with weakly increasing maps, min pooling with
decreasing ones); the decoder's transposed convolutions run as one undilated convolution per
output parity class (``closure._conv_transpose_subpixel``): the same products summed in another
order. Gradients therefore agree up to float32 rounding. "Up to rounding" is measured against a
float64 evaluation of the layers as first written: the fast float32 gradients must be about as
close to it as the plain float32 ones are.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jmacro.models import closure, make_spin_autoencoder
from jmacro.training import TrainConfig, fit, reconstruction_loss

rbg_key = functools.partial(jr.key, impl="rbg")


def _spins_with_domains(seed, count, side) -> np.ndarray:
    """Random spins, half of them with large uniform domains (many exact ties in the pools)."""
    rng = np.random.default_rng(seed)
    spins = np.where(rng.random((count, side, side)) < 0.5, 1, -1).astype(np.int8)
    spins[::2, : side // 2] = 1
    spins[::2, side // 2 :, : side // 2] = -1
    return spins


@pytest.fixture(scope="module")
def model():
    model = make_spin_autoencoder(rbg_key(1), 16, 8, closure_dim=2, base_channels=4)
    # GroupNorm gains of both signs: negative gains take the min-pooling branch.
    norms = lambda m: [n.weight for n in m.local_encoder.norms + m.decoder.norms]  # noqa: E731
    gains = [jr.normal(rbg_key(10 + i), w.shape) for i, w in enumerate(norms(model))]
    return eqx.tree_at(norms, model, gains)


def _loss_and_grad(model, batch, plain):
    params, static = eqx.partition(model, eqx.is_inexact_array)
    fn = jax.jit(jax.value_and_grad(lambda p: reconstruction_loss(eqx.combine(p, static), batch)))
    if plain:
        with closure.plain_layers():
            return fn(params)
    return fn(params)


@pytest.mark.parametrize("signed", [False, True])
def test_norm_after_pooling_is_bitwise_the_same_forward(signed):
    norm = eqx.nn.GroupNorm(8, 32)
    weight = jr.normal(rbg_key(0), (32,)) if signed else jnp.abs(jr.normal(rbg_key(0), (32,)))
    norm = eqx.tree_at(lambda n: (n.weight, n.bias), norm, (weight, jr.normal(rbg_key(1), (32,))))
    continuous = jr.normal(rbg_key(2), (16, 16, 32))
    tied = jnp.round(2 * continuous)  # integer values: many ties inside the 2x2 windows
    for x in (continuous, tied):
        fast = closure._norm_leaky_pool(norm, x)
        plain = closure._max_pool_2x2(jax.nn.leaky_relu(closure._group_norm_hwc(norm, x), 0.2))
        np.testing.assert_array_equal(np.asarray(fast), np.asarray(plain))


def test_subpixel_transposed_convolution_equals_equinox():
    for c_in, c_out in ((16, 8), (4, 1)):
        conv = eqx.nn.ConvTranspose2d(
            c_in, c_out, 3, stride=2, padding=1, output_padding=1, key=rbg_key(c_in)
        )
        assert closure._is_subpixel_deconv(conv)
        x = jr.normal(rbg_key(5), (4, 6, c_in))  # not square: rows and columns kept apart
        fast = closure._conv_transpose_subpixel(conv, x)
        reference = jnp.moveaxis(conv(jnp.moveaxis(x, -1, 0)), 0, -1)
        np.testing.assert_allclose(
            fast, reference, rtol=0, atol=1e-5 * float(jnp.abs(reference).max())
        )


def test_fast_loss_and_gradients_match_the_plain_layers_to_float32_rounding(model):
    batch = jnp.asarray(_spins_with_domains(0, 8, 16))
    fast_loss, fast_grad = _loss_and_grad(model, batch, plain=False)
    plain_loss, plain_grad = _loss_and_grad(model, batch, plain=True)
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
        model64 = jax.tree.map(
            lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model
        )
        ref_loss, ref_grad = _loss_and_grad(model64, batch, plain=True)
        ref_loss, ref_grad = np.asarray(ref_loss), jax.tree.map(np.asarray, ref_grad)
    # The loss: the encoder's forward is bitwise the same, the decoder's sums reordered.
    assert abs(float(fast_loss) - float(plain_loss)) <= 1e-6 * abs(float(plain_loss))
    # Gradients: each leaf's error against float64 is at most a few times the plain float32
    # error, plus a floor of float32 epsilon times the largest gradient (leaves whose exact
    # value is small next to the terms summed, e.g. conv biases before a norm, carry
    # rounding of the terms' size).
    leaves = [np.asarray(a, np.float64) for a in jax.tree.leaves(ref_grad)]
    floor = 8 * np.finfo(np.float32).eps * max(np.abs(a).max() for a in leaves)
    for fast, plain, ref in zip(
        jax.tree.leaves(fast_grad), jax.tree.leaves(plain_grad), leaves, strict=True
    ):
        fast_err = np.abs(np.asarray(fast, np.float64) - ref).max()
        plain_err = np.abs(np.asarray(plain, np.float64) - ref).max()
        assert fast_err <= 4 * plain_err + floor, (fast_err, plain_err, floor)


def test_fit_gives_the_same_losses_with_the_plain_layers(model):
    train = _spins_with_domains(1, 24, 16)
    val = _spins_with_domains(2, 8, 16)
    config = TrainConfig(learning_rate=2e-3, batch_size=8, num_epochs=2, show_progress=False)

    def run(plain):
        loss = lambda m, b, k: reconstruction_loss(m, b, k)  # noqa: E731 (fresh: fit caches)
        if plain:
            with closure.plain_layers():
                return fit(model, loss, train, val, rbg_key(3), config).history
        return fit(model, loss, train, val, rbg_key(3), config).history

    fast, plain = run(False), run(True)
    for a, b in zip(fast, plain, strict=True):
        np.testing.assert_allclose(a.train_loss, b.train_loss, rtol=1e-5)
        np.testing.assert_allclose(a.val_loss, b.val_loss, rtol=1e-5)
