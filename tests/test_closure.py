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
    build_model,
    ising_observables,
    ising_periodic_observables,
    known_observables,
    make_field_autoencoder,
    make_spin_autoencoder,
    model_hyperparams,
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
    encode, _ = encode_fns
    model = spin_autoencoder
    x = jnp.asarray(random_spins(0, (16, 16)))
    per_patch = eqx.filter_jit(lambda m, x: m.encode_patches(x))(model, x)
    assert model.known_dim == 2 and model.latent_dim == 4
    chex.assert_shape(per_patch, (4, 4))
    chex.assert_trees_all_close(encode(x), jnp.mean(per_patch, axis=0), atol=1e-6)
    # Each share: z* of the patch with its lower row / right column of lattice neighbours,
    # phi_loc of the patch alone.
    windows = lattice.tile_with_halo(x, 8, 1)
    chex.assert_trees_all_equal(windows[:, :8, :8], lattice.tile(x, 8))
    chex.assert_trees_all_equal(windows[1, :8, 8], x[:8, 0])  # patch 1's right: column 0
    chex.assert_trees_all_equal(windows[2, 8, :8], x[0, :8])  # patch 2's below: row 0
    chex.assert_trees_all_close(per_patch[:, :2], jax.vmap(ising_observables)(windows))
    codes = eqx.filter_jit(lambda f, p: jax.vmap(f)(p))(model.local_encoder, lattice.tile(x, 8))
    chex.assert_trees_all_close(per_patch[:, 2:], codes, atol=1e-6)


@pytest.mark.parametrize("lattice_side", [16, 32])
def test_known_ising_is_exactly_the_lattice_observables(lattice_side):
    # Each patch owns its right and lower bonds, read through the lattice: the patch mean is
    # the lattice's (m, domain-wall density) for every patch size (K = 1 included).
    x = jnp.asarray(random_spins(lattice_side, (lattice_side, lattice_side)))
    lattice_values = jnp.stack([observables.magnetisation(x), observables.domain_wall_density(x)])
    for side in (4, 8, 16):
        model = make_spin_autoencoder(rbg_key(0), lattice_side, side, closure_dim=0)
        shares = model.encode_patches(x)
        chex.assert_shape(shares, ((lattice_side // side) ** 2, 2))
        chex.assert_trees_all_close(jnp.mean(shares, axis=0), lattice_values, atol=1e-6)
        chex.assert_trees_all_close(model.encode(x), lattice_values, atol=1e-6)
    # Rectangular lattices and patches (one row of patches: the halo row wraps onto itself).
    x = jnp.asarray(random_spins(7, (8, 24)))
    model = make_spin_autoencoder(rbg_key(0), (8, 24), (8, 6), closure_dim=0)
    expected = jnp.stack([observables.magnetisation(x), observables.domain_wall_density(x)])
    chex.assert_trees_all_close(model.encode(x), expected, atol=1e-6)


def test_periodic_option_keeps_the_reference_values():
    # known="ising_periodic": bonds wrap around each patch, as in the reference; its patch
    # mean is not the lattice's domain-wall density.
    x = jnp.asarray(random_spins(3, (16, 16)))
    model = make_spin_autoencoder(rbg_key(0), 16, 8, closure_dim=0, known="ising_periodic")
    patches = lattice.tile(x, 8)
    reference = jnp.mean(
        jax.vmap(lambda p: jnp.stack([jnp.mean(p.astype(jnp.float32)), _periodic_dw(p)]))(patches),
        axis=0,
    )
    chex.assert_trees_all_close(model.encode(x), reference, atol=1e-6)
    # A stripe of 8 down columns across the patch seam: 2 walls per row in the lattice, 2 per
    # row in each patch (the wrapping bonds replace the crossing ones), twice the density.
    stripe = jnp.ones((16, 16), jnp.int8).at[:, 2:10].set(-1)
    chex.assert_trees_all_close(observables.domain_wall_density(stripe), jnp.float32(1 / 16))
    chex.assert_trees_all_close(model.encode(stripe)[1], jnp.float32(2 / 16))
    # encode_patch is the patch as a small periodic system, for either definition.
    halo = make_spin_autoencoder(rbg_key(0), 16, 8, closure_dim=0)
    for p in patches:
        chex.assert_trees_all_close(halo.encode_patch(p), model.encode_patch(p), atol=1e-7)
        chex.assert_trees_all_close(halo.encode_patch(p), ising_periodic_observables(p))


def _periodic_dw(patch):
    # The reference's patch density, written out: mean over the 2hw wrapping bonds.
    s = patch.astype(jnp.float32)
    bonds = jnp.concatenate([(s * jnp.roll(s, -1, 0)).ravel(), (s * jnp.roll(s, -1, 1)).ravel()])
    return jnp.mean((1 - bonds) / 2)


@pytest.mark.parametrize("known", ["ising", "ising_periodic"])
def test_replacing_a_patch_moves_z_by_the_replacement_increment_over_k(spin_autoencoder, known):
    # The identity behind the "ours" pairs: z(x') = z(x) + replacement_increment / K, for
    # random lattices, patches and replacements, learned closure included.
    ae = spin_autoencoder
    model = ClosureAutoencoder(
        ae.local_encoder, ae.decoder, known_observables(known), ae.config_shape, ae.patch_shape
    )
    increment = eqx.filter_jit(lambda m, x, i, p: m.replacement_increment(x, i, p))
    encode = eqx.filter_jit(lambda m, x: m.encode(x))
    rng = np.random.default_rng(8)
    for trial in range(6):
        x = jnp.asarray(random_spins(10 + trial, (16, 16)))
        new_patch = jnp.asarray(random_spins(20 + trial, (8, 8)))
        index = jnp.int32(rng.integers(0, 4))
        x_new = lattice.insert_patch(x, index, new_patch)
        step = increment(model, x, index, new_patch)
        chex.assert_trees_all_close(
            encode(model, x) + step / model.num_patches, encode(model, x_new), atol=1e-6
        )
        if known == "ising_periodic":  # no halo: the reference's phi_loc(new) - phi_loc(old)
            old_patch = lattice.extract_patch(x, index, 8)
            codes = jax.vmap(model.encode_patch)(jnp.stack([old_patch, new_patch]))
            chex.assert_trees_all_close(step, codes[1] - codes[0], atol=1e-6)


def test_old_hyperparameters_rebuild_the_model_they_were_saved_from():
    # Format 1 (before the lattice-read bonds): known="ising" meant the patch-periodic bonds.
    old = {"kind": "spin_autoencoder", "lattice_shape": [16, 16], "patch_shape": [8, 8]}
    old |= {"closure_dim": 0, "known": "ising"}
    assert build_model(old).known == known_observables("ising_periodic")
    assert build_model({k: v for k, v in old.items() if k != "known"}).known.halo == 0
    new = model_hyperparams("spin_autoencoder", **{k: v for k, v in old.items() if k != "kind"})
    assert new["format"] == 2 and build_model(new).known == known_observables("ising")
    with pytest.raises(ValueError, match="format 3"):
        build_model({**new, "format": 3})


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
