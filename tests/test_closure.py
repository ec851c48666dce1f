"""The closure autoencoder: exact patch additivity, known observables, shapes, losses."""

from __future__ import annotations

import functools

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jmacro import lattice, observables
from jmacro.models import (
    ClosureAutoencoder,
    make_field_autoencoder,
    make_spin_autoencoder,
    spin_binary_cross_entropy,
)
from jmacro.training import TrainConfig, fit, reconstruction_loss

# "rbg" keys: threefry kernels take seconds to compile per shape on a 2-core CPU.
rbg_key = functools.partial(jr.key, impl="rbg")


def random_spins(seed, shape) -> np.ndarray:
    return np.where(np.random.default_rng(seed).random(shape) < 0.5, 1, -1).astype(np.int8)


@pytest.fixture(scope="module")
def spin_autoencoder() -> ClosureAutoencoder:
    # Small CNN (base_channels 4) on a 16x16 lattice of 8x8 patches: same code path as the
    # reference's 64x64 / 16x16 / 32 channels, a fraction of the compile time.
    return make_spin_autoencoder(rbg_key(0), 16, 8, closure_dim=2, base_channels=4)


@pytest.fixture(scope="module")
def encode_fns(spin_autoencoder):
    model = spin_autoencoder
    return (
        jax.jit(lambda x: model.encode(x)),
        jax.jit(jax.vmap(model.encode_patch)),
    )


def test_encode_is_the_mean_of_patch_encodings(spin_autoencoder, encode_fns):
    encode, encode_patches = encode_fns
    x = jnp.asarray(random_spins(0, (16, 16)))
    per_patch = encode_patches(lattice.tile(x, 8))
    chex.assert_shape(per_patch, (4, 4))
    chex.assert_trees_all_close(encode(x), jnp.mean(per_patch, axis=0), atol=1e-6)


def test_changing_one_patch_moves_z_by_its_difference_over_k(spin_autoencoder, encode_fns):
    # The identity behind the "ours" pairs: z(x') - z(x) = (phi(x'_I) - phi(x_I)) / K.
    encode, encode_patches = encode_fns
    x = jnp.asarray(random_spins(1, (16, 16)))
    new_patch = jnp.asarray(random_spins(2, (8, 8)))
    index = 3
    x_new = lattice.insert_patch(x, index, new_patch)
    old_code, new_code = encode_patches(jnp.stack([lattice.extract_patch(x, index, 8), new_patch]))
    expected = encode(x) + (new_code - old_code) / spin_autoencoder.num_patches
    chex.assert_trees_all_close(encode(x_new), expected, atol=1e-6)


def test_known_part_is_the_observables(spin_autoencoder, encode_fns):
    encode, _ = encode_fns
    x = jnp.asarray(random_spins(3, (16, 16)))
    z = encode(x)
    assert spin_autoencoder.known_dim == 2 and spin_autoencoder.latent_dim == 4
    # magnetisation is a plain spatial mean: the patch mean is the lattice value exactly.
    chex.assert_trees_all_close(z[0], observables.magnetisation(x), atol=1e-6)
    # the domain-wall part is the mean of the patches' own (periodic-patch) densities.
    patch_dw = jax.vmap(observables.domain_wall_density)(lattice.tile(x, 8))
    chex.assert_trees_all_close(z[1], jnp.mean(patch_dw), atol=1e-6)


def test_decoder_outputs_logits_of_the_whole_lattice(spin_autoencoder):
    x = jnp.asarray(random_spins(4, (16, 16)))
    loss, logits = eqx.filter_jit(lambda m, x: (m.reconstruction_loss(x), m.decode(m.encode(x))))(
        spin_autoencoder, x
    )
    chex.assert_shape(logits, (16, 16))
    chex.assert_tree_all_finite((loss, logits))
    chex.assert_trees_all_close(loss, spin_binary_cross_entropy(logits, x), rtol=1e-6)


def test_channels_last_networks_equal_the_channels_first_layers(spin_autoencoder):
    # The CNN and the decoder run channels-last for speed; they must compute exactly what
    # the Equinox layers compute channels-first (conv -> GroupNorm -> LeakyReLU -> MaxPool;
    # linear -> LeakyReLU -> [ConvTranspose -> GroupNorm -> LeakyReLU] ... -> ConvTranspose).
    encoder, decoder = spin_autoencoder.local_encoder, spin_autoencoder.decoder
    # Non-trivial GroupNorm affine parameters, so that channel order matters.
    perturb = lambda m: eqx.tree_at(  # noqa: E731
        lambda m: [n.weight for n in m.norms],
        m,
        [1 + jr.normal(rbg_key(i), n.weight.shape) for i, n in enumerate(m.norms)],
    )
    encoder, decoder = perturb(encoder), perturb(decoder)

    def encoder_reference(patch):
        h = patch.astype(jnp.float32)[None]
        for conv, norm in zip(encoder.convs, encoder.norms, strict=True):
            h = eqx.nn.MaxPool2d(2, stride=2)(jax.nn.leaky_relu(norm(conv(h)), 0.2))
        return encoder.head(h.reshape(-1))

    def decoder_reference(z):
        h = jax.nn.leaky_relu(decoder.linear(z).reshape(decoder.start_shape), 0.2)
        for b, deconv in enumerate(decoder.deconvs):
            h = deconv(h)
            if b < len(decoder.norms):
                h = jax.nn.leaky_relu(decoder.norms[b](h), 0.2)
        return h[0]

    patch = jnp.asarray(random_spins(6, (8, 8)))
    z = jnp.array([0.2, 0.4, -1.0, 0.5])
    both = eqx.filter_jit(
        lambda e, d: (e(patch), encoder_reference(patch), d(z), decoder_reference(z))
    )
    fast_code, code, fast_logits, logits = both(encoder, decoder)
    chex.assert_trees_all_close(fast_code, code, atol=1e-5)
    chex.assert_trees_all_close(fast_logits, logits, atol=1e-5)


def test_binary_cross_entropy_is_exact_and_stable():
    spins = jnp.array([[1, -1, 1, -1]], jnp.int8)
    logits = jnp.array([[0.3, -2.0, 4.0, 1.5]])
    p = jax.nn.sigmoid(logits)
    y = (spins + 1) / 2
    naive = -jnp.mean(y * jnp.log(p) + (1 - y) * jnp.log(1 - p))
    chex.assert_trees_all_close(spin_binary_cross_entropy(logits, spins), naive, rtol=1e-6)
    # Confident logits: right -> ~0 loss, wrong -> loss ~ |logit|; no inf/NaN where the naive
    # formula takes log(0).
    extreme = jnp.array([[200.0, -200.0, -200.0, 200.0]])
    value = spin_binary_cross_entropy(extreme, spins)
    chex.assert_trees_all_close(value, jnp.float32(100.0), rtol=1e-6)  # half wrong by 200
    assert bool(jnp.isnan(-jnp.mean(y * jnp.log(jax.nn.sigmoid(extreme)))))  # naive: 0 * -inf


def test_closure_dim_zero_has_no_network():
    model = make_spin_autoencoder(rbg_key(0), 16, 4, closure_dim=0, known="magnetisation")
    x = jnp.asarray(random_spins(5, (16, 16)))
    assert model.local_encoder is None and model.decoder is None
    assert model.latent_dim == 1 and not jax.tree.leaves(model)
    chex.assert_trees_all_close(model.encode(x), observables.magnetisation(x)[None], atol=1e-6)
    with pytest.raises(ValueError, match="closure_dim = 0"):
        model.reconstruction_loss(x)


def test_field_autoencoder_shapes_and_additivity():
    model = make_field_autoencoder(rbg_key(1), num_cells=200, patch_cells=40)
    assert model.num_patches == 5 and model.latent_dim == 4
    field = jnp.asarray(np.random.default_rng(0).uniform(size=(200, 2)), jnp.float32)
    z, z_40, codes, decoded = eqx.filter_jit(
        lambda m, f: (
            m.encode(f),
            m.encode(f, patch_size=40),
            jax.vmap(m.local_encoder)(f.reshape(5, 40, 2)),
            m.decode(m.encode(f)),
        )
    )(model, field)
    chex.assert_shape((z, decoded), ((4,), (200, 2)))
    # known part: the species means; closure part: mean over patches of the shared MLP.
    chex.assert_trees_all_close(z[:2], jnp.mean(field, axis=0), atol=1e-6)
    chex.assert_trees_all_close(z[2:], jnp.mean(codes, axis=0), atol=1e-6)
    chex.assert_trees_all_close(z_40, z, atol=1e-6)


def test_autoencoder_training_reduces_reconstruction_loss():
    # A few epochs on smooth random fields: the MSE must fall well below its initial value.
    rng = np.random.default_rng(0)
    cells = np.linspace(0, 1, 40)
    amplitude, phase = rng.uniform(0.05, 0.15, (512, 1)), rng.uniform(0, 2 * np.pi, (512, 1))
    u = 0.5 + amplitude * np.cos(4 * np.pi * cells + phase)
    fields = np.stack([u, 1 - u], axis=-1).astype(np.float32)  # (512, 40, 2)
    model = make_field_autoencoder(rbg_key(2), num_cells=40, patch_cells=8)
    config = TrainConfig(learning_rate=3e-3, batch_size=128, num_epochs=15, show_progress=False)
    result = fit(model, reconstruction_loss, fields[:384], fields[384:], rbg_key(3), config)
    first, best = result.history[0].val_loss, result.best_val_loss
    assert best < 0.2 * first, (first, best)


def test_bad_configurations_raise():
    with pytest.raises(ValueError, match="does not tile"):
        make_spin_autoencoder(rbg_key(0), 16, 5, closure_dim=0, known="magnetisation")
    with pytest.raises(ValueError, match="unknown known-observable"):
        make_spin_autoencoder(rbg_key(0), 16, 4, closure_dim=0, known="energy")
    with pytest.raises(ValueError, match="closure dimension"):
        make_spin_autoencoder(rbg_key(0), 16, 4, closure_dim=-1)
    model = make_spin_autoencoder(rbg_key(0), 16, 4, closure_dim=0, known="ising")
    with pytest.raises(ValueError, match="one configuration of shape"):
        model.encode(jnp.ones((32, 32), jnp.int8))
    with pytest.raises(ValueError, match="built for patches"):
        model.encode(jnp.ones((16, 16), jnp.int8), patch_size=8)
