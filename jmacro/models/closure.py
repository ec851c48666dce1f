"""Closure autoencoder with a patch-additive encoder.

The latent of one configuration x is

    z(x) = (1/K) sum_k (z*(w_k), phi_loc(x_{I_k})),

over the K patches I_k that tile the lattice (``jmacro.lattice.tile``), in row-major order
(``encode_patches`` gives the K shares). phi_loc is a small local network that reads the patch
only. z* are the system's known observables (``KnownObservables``), each patch's share of a
spatial mean, read from the window w_k: the patch plus, when the observables need it, a halo
of the lattice's neighbouring sites below and to the right of it (periodic at the lattice
level, ``lattice.tile_with_halo``). For Ising (``known="ising"``) each patch owns the bonds to
its right and lower neighbours, so the patch mean of z* is the lattice's (magnetisation,
domain-wall density) exactly, whatever the patch size; ``"ising_periodic"`` is the
reference's definition, bonds wrapping around each patch, whose patch mean is not the
lattice's domain-wall density (and differs between patch sizes).

The encoder is therefore exactly patch-additive, which is what the partial-evolution pairs
rely on: replacing one patch changes z by 1/K of the change of the shares that read it
(``replacement_increment``): its own share and, through their halos, the known part of its
left, upper and upper-left neighbours' shares. ``encode_patch`` encodes a patch as a small
periodic system of its own (the halo wraps around the patch), what a small simulation is.

A decoder maps z back to a whole configuration; the autoencoder is trained on reconstruction
only: binary cross-entropy for spins (decoder outputs the logits of P(s = +1) per site), mean
squared error for fields. With ``closure_dim = 0`` there is no network at all: the encoder
returns z* and there is nothing to train.

Shapes: a spin configuration is ``(H, W)`` (int8 or float, values -1/+1), a spin patch
``(h, w)``; a field configuration is ``(n_cells, n_species)`` (1D space, e.g. (u, v) on 200
cells), a field patch ``(n_patch_cells, n_species)``. Models act on ONE configuration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, Shaped

from jmacro import lattice
from jmacro._checks import check_positive_int
from jmacro.observables import domain_wall_density, magnetisation


# ------------------------------------------------------------------------ known observables
@dataclasses.dataclass(frozen=True)
class KnownObservables:
    """The known observables z* of one patch, read from the patch and a halo after it.

    Attributes:
        fn: ``window -> (known_dim,)``. The window is the patch with the ``halo`` rows below
            it and the ``halo`` columns to its right: ``(h + halo, w + halo)``, the patch at
            ``window[:h, :w]`` (a 1D field patch ``(n_cells, n_species)`` with ``halo = 0``).
        halo: 0 (the patch alone) or the width of the halo ``fn`` reads. In the encoder the
            halo holds the lattice's neighbouring spins (periodic at the lattice level,
            ``lattice.tile_with_halo``); for a patch taken as a small periodic system of its
            own (``ClosureAutoencoder.encode_patch``) it holds the patch's own periodic images.

    z* must be a per-patch share of a spatial mean: the mean over the K patches of
    ``fn(window_k)`` is then the observable of the whole lattice, exactly.
    """

    fn: Callable[[Array], Array]
    halo: int = 0

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"known-observable fn must be callable, got {self.fn!r}.")
        if isinstance(self.halo, bool) or not isinstance(self.halo, int) or self.halo < 0:
            raise ValueError(f"halo must be an int >= 0, got {self.halo!r}.")

    def periodic_window(self, patch: Shaped[Array, "h w"]) -> Shaped[Array, "hh ww"]:
        """The window of ``patch`` taken as a small periodic system: its halo wraps around."""
        if not self.halo:
            return patch
        return jnp.pad(patch, ((0, self.halo), (0, self.halo)), mode="wrap")


def ising_observables(window: Shaped[Array, "hh ww"]) -> Float[Array, "2"]:
    """(magnetisation, domain-wall density) of an ``(h, w)`` spin patch that owns its bonds.

    ``window`` is the patch (``window[:h, :w]``) with the row below it and the column to its
    right (``window[h, :w]``, ``window[:h, w]``; the corner ``window[h, w]`` is not read).
    Each site owns two bonds, to its lower and to its right neighbour, so the patch owns 2hw
    bonds, the ones to its right and lower neighbours crossing its boundary into the halo.
    Returns ``(m, rho)`` with m = (1/hw) sum_{i in patch} s_i and
    rho = (1/2hw) sum_{owned bonds ij} (1 - s_i s_j)/2, in [0, 1].

    With the lattice's neighbouring spins in the halo (``lattice.tile_with_halo``) the K
    patches own each of the 2n bonds of the periodic lattice exactly once, so the mean over
    patches of rho is ``observables.domain_wall_density`` of the lattice, for any patch size.
    Registered as ``"ising"`` (halo 1); ``ising_periodic_observables`` is the reference's.
    """
    s = window.astype(jnp.float32)
    patch = s[:-1, :-1]
    vertical, horizontal = patch * s[1:, :-1], patch * s[:-1, 1:]
    density = 0.5 * (1.0 - 0.5 * (jnp.mean(vertical) + jnp.mean(horizontal)))
    return jnp.stack([jnp.mean(patch), density])


def ising_periodic_observables(patch: Shaped[Array, "h w"]) -> Float[Array, "2"]:
    """(magnetisation, domain-wall density) of a spin patch as a small periodic system.

    The reference's definition (``known="ising_periodic"``): the 2hw bonds of the patch wrap
    around the patch itself (``observables.domain_wall_density(patch)``). The patch mean of
    these densities is NOT the lattice's domain-wall density: the wrapping bonds replace the
    bonds that cross patch boundaries (about +10% at patch side 8 and +6% at side 16 for
    the reference's snapshots), so each patch size learns a different observable.
    """
    return jnp.stack([magnetisation(patch), domain_wall_density(patch)])


def magnetisation_observable(patch: Shaped[Array, "h w"]) -> Float[Array, "1"]:
    """(magnetisation,) of a spin patch: the closed observable of Curie-Weiss."""
    return magnetisation(patch)[None]


def field_means(patch: Shaped[Array, "n s"]) -> Float[Array, " s"]:
    """Mean over cells of each species of a 1D field patch ``(n_cells, n_species)``."""
    return jnp.mean(patch.astype(jnp.float32), axis=0)


KNOWN_OBSERVABLES: dict[str, KnownObservables | Callable[[Array], Array]] = {
    "ising": KnownObservables(ising_observables, halo=1),
    "ising_periodic": KnownObservables(ising_periodic_observables),
    "magnetisation": KnownObservables(magnetisation_observable),
    "field_means": KnownObservables(field_means),
}


def known_observables(name: str) -> KnownObservables:
    """The known observables registered under ``name`` (see ``KNOWN_OBSERVABLES``); a plain
    function registered there is a ``KnownObservables`` of the patch alone (halo 0)."""
    try:
        known = KNOWN_OBSERVABLES[name]
    except KeyError:
        raise ValueError(
            f"unknown known-observable set {name!r}; use one of {sorted(KNOWN_OBSERVABLES)} "
            "or register a KnownObservables (or a function of one patch) in "
            "jmacro.models.closure.KNOWN_OBSERVABLES."
        ) from None
    return known if isinstance(known, KnownObservables) else KnownObservables(known)


# ------------------------------------------------------------------------- local encoders
def _num_groups(channels: int) -> int:
    # GroupNorm normalises each sample on its own (models act on one sample, so BatchNorm's
    # batch statistics are not available); 8 groups is the usual choice, fewer if it must.
    return math.gcd(channels, 8)


class SpinPatchCNN(eqx.Module):
    """phi_loc for spin patches: [conv3x3 -> GroupNorm -> LeakyReLU(0.2) -> maxpool2] * B
    -> flatten -> linear -> ``out_size`` numbers.

    Reference: B = 3 blocks of 32/64/128 channels for patches >= 16 (2 blocks for 8x8),
    BatchNorm. Here the norm is GroupNorm (per sample: models act on one sample, so there are
    no batch statistics) and the width is ``base_channels * 2**b``. ``base_channels=32`` is
    the reference; smaller values trade capacity for CPU time, because the encoder runs on
    all K patches of every snapshot and dominates the autoencoder's cost. Measured training
    throughput, 64x64 lattice, 16x16 patches, batch 512, 2-core CPU, one run
    (``benchmarks/bench_training.py``, issue 12): with 32, 250-300 snapshots/s in the
    pipeline's micro-batches of 8 (``TrainConfig.micro_batch``) against ~70/s for whole batches
    and the layers as first written (3.6-4.6x); with 8, ~900/s (2.1x).
    """

    convs: tuple[eqx.nn.Conv2d, ...]
    norms: tuple[eqx.nn.GroupNorm, ...]
    head: eqx.nn.Linear
    patch_shape: tuple[int, int] = eqx.field(static=True)

    def __init__(
        self,
        patch_shape: tuple[int, int],
        out_size: int,
        key: PRNGKeyArray,
        base_channels: int = 32,
        num_blocks: int | None = None,
    ):
        ph, pw = lattice.check_patch_size(patch_shape, patch_shape)
        base_channels = check_positive_int(base_channels, "base_channels")
        if num_blocks is None:
            # The reference's rule: 3 pooling blocks, fewer for small patches (8x8 -> 2).
            num_blocks = min(3, int(math.log2(min(ph, pw) // 2)))
        if min(ph, pw) % 2**num_blocks:
            raise ValueError(
                f"patch {patch_shape} cannot be halved {num_blocks} times; use a patch side "
                f"divisible by {2**num_blocks} or fewer blocks."
            )
        keys = jr.split(key, num_blocks + 1)
        channels = [1] + [base_channels * 2**b for b in range(num_blocks)]
        self.convs = tuple(
            eqx.nn.Conv2d(channels[b], channels[b + 1], 3, padding=1, key=keys[b])
            for b in range(num_blocks)
        )
        self.norms = tuple(eqx.nn.GroupNorm(_num_groups(c), c) for c in channels[1:])
        flat = channels[-1] * (ph // 2**num_blocks) * (pw // 2**num_blocks)
        self.head = eqx.nn.Linear(flat, out_size, key=keys[-1])
        self.patch_shape = (ph, pw)

    def __call__(self, patch: Shaped[Array, "h w"]) -> Float[Array, " c"]:
        # Channels-last internally (the modules' parameters are the usual OIHW/(C,) ones):
        # XLA:CPU runs these small convolutions 1.5-2.5x faster in NHWC than in NCHW.
        h = patch.astype(self.convs[0].weight.dtype)[:, :, None]  # float32 unless cast
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = _conv_hwc(conv, h)
            if _PLAIN_LAYERS:
                h = _max_pool_2x2(jax.nn.leaky_relu(_group_norm_hwc(norm, h), 0.2))
            else:
                h = _norm_leaky_pool(norm, h)
        # Flatten in (C, H, W) order, as the channels-first reference does.
        return self.head(jnp.moveaxis(h, -1, 0).reshape(-1))


# Trace-time switch to the layers as first written (the norm before the pooling, the decoder's
# transposed convolutions as dilated convolutions), which the faster forms must reproduce:
# for tests and benchmarks only (``plain_layers``).
_PLAIN_LAYERS = False


@contextlib.contextmanager
def plain_layers():
    """Within this block, functions traced run the spin networks' layers as first written:
    ``_max_pool_2x2(leaky_relu(group_norm(x)))`` in the encoder and the transposed
    convolutions as stride-dilated convolutions in the decoder. Same outputs, up to float
    rounding; slower on CPU. For tests and benchmarks that compare the two: jit caches do not
    see the switch, so trace fresh functions inside the block."""
    global _PLAIN_LAYERS
    previous, _PLAIN_LAYERS = _PLAIN_LAYERS, True
    try:
        yield
    finally:
        _PLAIN_LAYERS = previous


def _conv_hwc(conv: eqx.nn.Conv2d, x: Float[Array, "h w c"]) -> Float[Array, "h2 w2 o"]:
    """``conv`` (an ``eqx.nn.Conv2d``) applied to a channels-last image."""
    y = jax.lax.conv_general_dilated(
        x[None],
        conv.weight,
        window_strides=conv.stride,
        padding=conv.padding,
        rhs_dilation=conv.dilation,
        dimension_numbers=("NHWC", "OIHW", "NHWC"),
    )[0]
    return y if conv.bias is None else y + conv.bias.reshape(-1)


def _conv_transpose_hwc(
    conv: eqx.nn.ConvTranspose2d, x: Float[Array, "h w c"]
) -> Float[Array, "h2 w2 o"]:
    """``conv`` (an ``eqx.nn.ConvTranspose2d`` with integer padding) on a channels-last image.

    The transposed convolution is the convolution of the ``stride``-dilated input with the
    same kernel and padding (k - 1) d - p before, (k - 1) d - p + output_padding after
    (Dumoulin & Visin 2016, relationship 14), as in Equinox.
    """
    if _is_subpixel_deconv(conv) and not _PLAIN_LAYERS:
        return _conv_transpose_subpixel(conv, x)
    padding = tuple(
        ((k - 1) * d - p0, (k - 1) * d - p1 + a)
        for k, d, (p0, p1), a in zip(
            conv.kernel_size, conv.dilation, conv.padding, conv.output_padding, strict=True
        )
    )
    y = jax.lax.conv_general_dilated(
        x[None],
        conv.weight,
        window_strides=(1, 1),
        padding=padding,
        lhs_dilation=conv.stride,
        rhs_dilation=conv.dilation,
        dimension_numbers=("NHWC", "OIHW", "NHWC"),
    )[0]
    return y if conv.bias is None else y + conv.bias.reshape(-1)


# The decoder's upsampling: kernel 3, stride 2, padding 1, output padding 1, no dilation.
# Output site 2i + a (a = 0, 1) of the stride-2-dilated correlation reads input i through tap 1
# (a = 0), or inputs i and i + 1 through taps 0 and 2 (a = 1); _SUBPIXEL_TAPS[a][e] is the tap
# that reads input i + e (3: none).
_SUBPIXEL_TAPS = ((1, 3), (0, 2))


def _is_subpixel_deconv(conv: eqx.nn.ConvTranspose2d) -> bool:
    return (
        tuple(conv.kernel_size) == (3, 3)
        and tuple(conv.stride) == (2, 2)
        and tuple(conv.padding) == ((1, 1), (1, 1))
        and tuple(conv.output_padding) == (1, 1)
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
    )


def _conv_transpose_subpixel(
    conv: eqx.nn.ConvTranspose2d, x: Float[Array, "h w c"]
) -> Float[Array, "h2 w2 o"]:
    """``_conv_transpose_hwc`` for kernel 3, stride 2, padding 1, output padding 1, as one
    undilated 2x2 convolution with 4 o outputs (one per output parity class), interleaved.

    The same non-zero products as the dilated convolution (each tap of the kernel is read
    once per output site; the zeros the dilation inserts are not multiplied), summed in
    another order: equal up to float rounding. On XLA:CPU the dilated form's weight gradient
    runs as a generic convolution loop, about 3x slower than this form's whole gradient.
    """
    out_channels, in_channels = conv.weight.shape[:2]
    taps = jnp.pad(conv.weight, ((0, 0), (0, 0), (0, 1), (0, 1)))  # tap 3 reads zeros
    t = jnp.asarray(_SUBPIXEL_TAPS)
    # kernel[a, b, o, i, e, f] = weight[o, i, taps[a][e], taps[b][f]]
    kernel = taps[:, :, t[:, None, :, None], t[None, :, None, :]]  # (o, i, a, b, e, f)
    kernel = jnp.transpose(kernel, (2, 3, 0, 1, 4, 5)).reshape(4 * out_channels, in_channels, 2, 2)
    y = jax.lax.conv_general_dilated(
        x[None],
        kernel,
        window_strides=(1, 1),
        padding=((0, 1), (0, 1)),
        dimension_numbers=("NHWC", "OIHW", "NHWC"),
    )[0]
    height, width = x.shape[:2]
    y = y.reshape(height, width, 2, 2, out_channels).transpose(0, 2, 1, 3, 4)
    y = y.reshape(2 * height, 2 * width, out_channels)
    return y if conv.bias is None else y + conv.bias.reshape(-1)


def _group_norm_hwc(norm: eqx.nn.GroupNorm, x: Float[Array, "h w c"]) -> Float[Array, "h w c"]:
    """``norm`` (an ``eqx.nn.GroupNorm``) applied to a channels-last image."""
    shift, gain, offset = _group_norm_affine(norm, x)
    return (x - shift) * gain + offset


def _group_norm_affine(norm: eqx.nn.GroupNorm, x: Float[Array, "h w c"]):
    """``(shift, gain, offset)``, per channel: ``norm(x) = (x - shift) * gain + offset``."""
    channels = x.shape[-1]
    # Per-channel moments first (a reduction over the leading, contiguous-friendly axes),
    # then pooled within groups: much faster on CPU than reducing a (hw, g, c/g) view.
    first = jnp.mean(x, axis=(0, 1)).reshape(norm.groups, -1).mean(axis=1)
    second = jnp.mean(x * x, axis=(0, 1)).reshape(norm.groups, -1).mean(axis=1)
    var = jnp.maximum(second - first**2, 0.0)
    scale = jnp.repeat(jax.lax.rsqrt(var + norm.eps), channels // norm.groups)
    shift = jnp.repeat(first, channels // norm.groups)
    if norm.channelwise_affine:
        return shift, scale * norm.weight, norm.bias
    return shift, scale, jnp.zeros((), x.dtype)


def _norm_leaky_pool(
    norm: eqx.nn.GroupNorm, x: Float[Array, "h w c"]
) -> Float[Array, "h//2 w//2 c"]:
    """``_max_pool_2x2(leaky_relu(_group_norm_hwc(norm, x), 0.2))``, pooling first.

    Per channel, GroupNorm is ``y -> (y - shift) * gain + offset`` and leaky ReLU is
    increasing; both stay weakly monotone in float32 arithmetic (each step is), so the
    maximum of the transformed window is the transform of the window's maximum when
    ``gain >= 0`` and of its minimum when ``gain < 0``: the same values, bit for bit, with the
    normalisation and activation (and their gradients) on a quarter of the sites. Gradients
    agree up to float rounding; they differ only where distinct sites of a window round to
    the same normalised value, or at gain exactly 0 (there the original splits the weight's
    gradient over the tied window).
    """
    shift, gain, offset = _group_norm_affine(norm, x)
    pooled = _pool_2x2_signed(x, gain >= 0)
    return jax.nn.leaky_relu((pooled - shift) * gain + offset, 0.2)


@jax.custom_vjp
def _pool_2x2_signed(x: Float[Array, "h w c"], upper: Bool[Array, " c"]) -> Float[Array, "h2 w2 c"]:
    """2x2 max pooling of the channels where ``upper``, min pooling of the others.

    The gradient is ``_max_pool_2x2``'s (JAX's ``maximum`` rule: ties share equally, pair by
    pair): each site's share of its window's gradient (1, 1/2, 1/4 or 0) is computed in the
    forward pass and kept, interleaved once into the input's layout, so the backward pass is
    the pooled gradient repeated over each window times the shares, with no interleave of
    four strided views (measured 1.07-1.14x on the paper-width training step).
    """
    return _pool_2x2_signed_fwd(x, upper)[0]


def _pool_2x2_signed_fwd(x, upper):
    # -max(-a, -b) = min(a, b) exactly: min pooling is max pooling of the negated channel.
    u = jnp.where(upper, x, -x)
    views = (u[::2, ::2], u[1::2, ::2], u[::2, 1::2], u[1::2, 1::2])
    left, right = jnp.maximum(views[0], views[1]), jnp.maximum(views[2], views[3])
    pooled = jnp.maximum(left, right)
    # d out / d x = sign * share * sign: the signs of the min-pooled channels cancel.
    share_left, share_right = _max_share(left, right), _max_share(right, left)
    shares = (
        share_left * _max_share(views[0], views[1]),
        share_left * _max_share(views[1], views[0]),
        share_right * _max_share(views[2], views[3]),
        share_right * _max_share(views[3], views[2]),
    )
    # views[r + 2 c] is x[r::2, c::2]: interleave rows (r) and columns (c) back.
    stacked = jnp.stack([jnp.stack([shares[0], shares[2]]), jnp.stack([shares[1], shares[3]])])
    shares = jnp.transpose(stacked, (2, 0, 3, 1, 4)).reshape(x.shape)
    return jnp.where(upper, pooled, -pooled), shares


def _pool_2x2_signed_bwd(shares, g):
    half_height, half_width, channels = g.shape
    windows = (half_height, 2, half_width, 2, channels)
    repeated = jnp.broadcast_to(g[:, None, :, None, :], windows).reshape(shares.shape)
    return repeated * shares, None


def _max_share(a, b):
    """d max(a, b) / da as JAX's ``maximum`` differentiates: 1, 1/2 at a tie, 0."""
    return jnp.where(a > b, 1.0, jnp.where(a == b, 0.5, 0.0)).astype(a.dtype)


_pool_2x2_signed.defvjp(_pool_2x2_signed_fwd, _pool_2x2_signed_bwd)


def _max_pool_2x2(x: Float[Array, "h w c"]) -> Float[Array, "h//2 w//2 c"]:
    """2x2 max pooling with stride 2 (channels last), the maximum of four strided views.

    Same values as ``eqx.nn.MaxPool2d(2, stride=2)``; on CPU its gradient is ~4x faster than
    the ``reduce_window`` one (``select_and_scatter``), which dominated the encoder's cost.
    """
    return jnp.maximum(
        jnp.maximum(x[::2, ::2], x[1::2, ::2]), jnp.maximum(x[::2, 1::2], x[1::2, 1::2])
    )


class FieldPatchMLP(eqx.Module):
    """phi_loc for 1D field patches: one MLP over the cells of each species, shared by all
    species (as in the reference), outputs concatenated species by species.

    Reference: 40-32-32-1 (ReLU) per species of a 40-cell patch, so 2 closure numbers for
    (u, v).
    """

    mlp: eqx.nn.MLP
    patch_shape: tuple[int, int] = eqx.field(static=True)

    def __init__(
        self,
        patch_shape: tuple[int, int],
        out_per_species: int,
        key: PRNGKeyArray,
        width_size: int = 32,
        depth: int = 2,
    ):
        num_cells = check_positive_int(patch_shape[0], "patch cells")
        num_species = check_positive_int(patch_shape[1], "number of species")
        self.mlp = eqx.nn.MLP(num_cells, out_per_species, width_size, depth, jax.nn.relu, key=key)
        self.patch_shape = (num_cells, num_species)

    def __call__(self, patch: Shaped[Array, "n s"]) -> Float[Array, " c"]:
        per_species = jax.vmap(self.mlp, in_axes=1)(patch.astype(jnp.float32))
        return per_species.reshape(-1)


# -------------------------------------------------------------------------------- decoders
class SpinDecoder(eqx.Module):
    """z -> logits of P(s = +1) for every site of an ``(H, W)`` lattice.

    linear -> LeakyReLU -> reshape ``(C0, H/2^U, W/2^U)`` -> U x [transposed conv 3x3 stride 2
    -> GroupNorm -> LeakyReLU(0.2)] with the last one to 1 channel and no norm. As the
    reference (which starts at 4x4 with 128 channels and halves channels down to 16), with
    ``C0 = 4 * base_channels`` and a final sigmoid replaced by logits (BCE from logits is
    numerically stable).
    """

    linear: eqx.nn.Linear
    deconvs: tuple[eqx.nn.ConvTranspose2d, ...]
    norms: tuple[eqx.nn.GroupNorm, ...]
    lattice_shape: tuple[int, int] = eqx.field(static=True)
    start_shape: tuple[int, int, int] = eqx.field(static=True)

    def __init__(
        self,
        latent_dim: int,
        lattice_shape: tuple[int, int],
        key: PRNGKeyArray,
        base_channels: int = 32,
    ):
        height, width = lattice.check_patch_size(lattice_shape, lattice_shape)
        base_channels = check_positive_int(base_channels, "base_channels")
        # As many doublings as keep the starting grid at least 4x4 (reference: 4x4 start).
        num_up = 0
        while (
            height % 2 ** (num_up + 1) == 0
            and width % 2 ** (num_up + 1) == 0
            and min(height, width) // 2 ** (num_up + 1) >= 4
        ):
            num_up += 1
        start_channels = 4 * base_channels if num_up else 1
        channels = [start_channels]
        for b in range(num_up):
            last = b == num_up - 1
            channels.append(1 if last else max(base_channels // 2, channels[-1] // 2))
        keys = jr.split(key, num_up + 1)
        self.start_shape = (start_channels, height // 2**num_up, width // 2**num_up)
        self.linear = eqx.nn.Linear(latent_dim, math.prod(self.start_shape), key=keys[0])
        self.deconvs = tuple(
            eqx.nn.ConvTranspose2d(
                channels[b],
                channels[b + 1],
                3,
                stride=2,
                padding=1,
                output_padding=1,
                key=keys[b + 1],
            )
            for b in range(num_up)
        )
        self.norms = tuple(eqx.nn.GroupNorm(_num_groups(c), c) for c in channels[1:-1])
        self.lattice_shape = (height, width)

    def __call__(self, z: Float[Array, " d"]) -> Float[Array, "H W"]:
        h = self.linear(z).reshape(self.start_shape)  # (C, h, w), the reference's unflatten
        if not self.deconvs:
            return h[0]
        # Channels-last internally, as in SpinPatchCNN (faster on CPU).
        h = jnp.moveaxis(jax.nn.leaky_relu(h, 0.2), 0, -1)
        for b, deconv in enumerate(self.deconvs):
            h = _conv_transpose_hwc(deconv, h)
            if b < len(self.norms):
                h = jax.nn.leaky_relu(_group_norm_hwc(self.norms[b], h), 0.2)
        return h[..., 0]

    def reconstruction_loss(
        self, z: Float[Array, " d"], x: Shaped[Array, "H W"]
    ) -> Float[Array, ""]:
        """Mean over sites of the binary cross-entropy of the spins given the logits."""
        return spin_binary_cross_entropy(self(z), x)


class FieldDecoder(eqx.Module):
    """z -> the whole field ``(n_cells, n_species)`` through an MLP (reference d-32-32-2n)."""

    mlp: eqx.nn.MLP
    field_shape: tuple[int, int] = eqx.field(static=True)

    def __init__(
        self,
        latent_dim: int,
        field_shape: tuple[int, int],
        key: PRNGKeyArray,
        width_size: int = 32,
        depth: int = 2,
    ):
        self.field_shape = (int(field_shape[0]), int(field_shape[1]))
        self.mlp = eqx.nn.MLP(
            latent_dim, math.prod(self.field_shape), width_size, depth, jax.nn.relu, key=key
        )

    def __call__(self, z: Float[Array, " d"]) -> Float[Array, "n s"]:
        return self.mlp(z).reshape(self.field_shape)

    def reconstruction_loss(
        self, z: Float[Array, " d"], x: Shaped[Array, "n s"]
    ) -> Float[Array, ""]:
        """Mean squared error over cells and species."""
        return jnp.mean((self(z) - x.astype(jnp.float32)) ** 2)


def spin_binary_cross_entropy(
    logits: Float[Array, "H W"], spins: Shaped[Array, "H W"]
) -> Float[Array, ""]:
    """Mean over sites of -[y log p + (1 - y) log(1 - p)], p = sigmoid(logit), y = (s + 1)/2.

    Computed as softplus(l) - y l, equal to the above without overflow or log(0) for any
    logit l (the reference's sigmoid + BCELoss clamps the logs at -100 instead).
    """
    target = (spins.astype(logits.dtype) + 1) / 2
    return jnp.mean(jax.nn.softplus(logits) - target * logits)


# ----------------------------------------------------------------------------- autoencoder
class ClosureAutoencoder(eqx.Module):
    """z(x) = mean_k (z*(window_k), phi_loc(x_{I_k})) and a decoder z -> x (see module doc).

    Attributes:
        local_encoder: phi_loc, ``patch -> (closure_dim,)``; None when closure_dim = 0.
        decoder: ``z -> configuration`` with a ``reconstruction_loss(z, x)``; None when
            closure_dim = 0.
        known: z*, a ``KnownObservables``: ``window -> (known_dim,)`` with the halo it reads
            (``window_k`` is patch k with the lattice's neighbours in its halo).
        config_shape: shape of one whole configuration.
        patch_shape: shape of one patch (for 1D fields: ``(n_patch_cells, n_species)``).
    """

    local_encoder: eqx.Module | None
    decoder: eqx.Module | None
    known: KnownObservables = eqx.field(static=True)
    config_shape: tuple[int, int] = eqx.field(static=True)
    patch_shape: tuple[int, int] = eqx.field(static=True)

    def __check_init__(self):
        lattice.check_patch_size(self.config_shape, self.patch_shape)
        if not isinstance(self.known, KnownObservables):
            raise TypeError(f"known must be a KnownObservables, got {self.known!r}.")
        if self.known.halo > min(self.patch_shape):
            raise ValueError(
                f"the known observables read a halo of {self.known.halo}, more than the patch "
                f"{self.patch_shape}."
            )
        if (self.local_encoder is None) != (self.decoder is None):
            raise ValueError(
                "local_encoder and decoder must both be given (closure_dim > 0) or both be "
                "None (closure_dim = 0)."
            )

    @property
    def known_dim(self) -> int:
        halo = self.known.halo
        dummy = jax.ShapeDtypeStruct(_grow(self.patch_shape, halo), jnp.float32)
        return jax.eval_shape(self.known.fn, dummy).shape[0]

    @property
    def closure_dim(self) -> int:
        if self.local_encoder is None:
            return 0
        dummy = jax.ShapeDtypeStruct(self.patch_shape, jnp.float32)
        return jax.eval_shape(self.local_encoder, dummy).shape[0]

    @property
    def latent_dim(self) -> int:
        return self.known_dim + self.closure_dim

    @property
    def num_patches(self) -> int:
        """K, the number of patches that tile one configuration."""
        return lattice.num_patches(self.config_shape, self.patch_shape)

    def encode_patch(self, patch: Shaped[Array, "h w"]) -> Float[Array, " d"]:
        """The patch encoded as a small periodic system of its own, shape ``(latent_dim,)``.

        (z*(periodic window of the patch), phi_loc(patch)): a halo that the known observables
        read wraps around the patch itself (``KnownObservables.periodic_window``), as the
        bonds of a small periodic system do. For known observables that read no halo this is
        also the patch's share of z(x) (a row of ``encode_patches``); for ``"ising"`` it
        differs from it in the domain-wall density, which counts the patch's wrapping bonds.
        """
        if patch.shape != self.patch_shape:
            raise ValueError(f"expected one patch of shape {self.patch_shape}, got {patch.shape}.")
        return self._code(self.known.periodic_window(patch), patch)

    def encode_patches(
        self, x: Shaped[Array, "H W"], patch_size: int | tuple[int, int] | None = None
    ) -> Float[Array, "K d"]:
        """Each of the K patches' share of z(x), ``(K, latent_dim)`` in row-major patch order:
        (z*(window_k), phi_loc(x_{I_k})), the known observables reading the lattice's
        neighbouring sites in their halo (``lattice.tile_with_halo``), phi_loc the patch only.
        """
        self._check_config(x)
        shape = self._patch_shape(patch_size)
        windows = lattice.tile_with_halo(x, shape, self.known.halo)
        if self.local_encoder is None:
            return jax.vmap(self.known.fn)(windows).astype(jnp.float32)
        return jax.vmap(self._code)(windows, lattice.tile(x, shape))

    def encode(
        self, x: Shaped[Array, "H W"], patch_size: int | tuple[int, int] | None = None
    ) -> Float[Array, " d"]:
        """z(x) = mean over the K patches of their shares (``encode_patches``), ``(latent_dim,)``.

        ``patch_size`` defaults to (and must equal) the model's patch: the local network is
        built for one patch size. For 1D fields an int means that many cells.
        """
        return jnp.mean(self.encode_patches(x, patch_size), axis=0)

    def replacement_increment(
        self,
        x: Shaped[Array, "H W"],
        index: int | Int[Array, ""],
        new_patch: Shaped[Array, "h w"],
        codes: Float[Array, "K d"] | None = None,
    ) -> Float[Array, " d"]:
        """K (z(x') - z(x)), x' = ``x`` with patch ``index`` replaced by ``new_patch``.

        Computed locally, from the shares that read the patch, exactly (up to float
        rounding): the closure part is phi_loc(new_patch) - phi_loc(x_{I_index}); the known
        part is sum_q z*(window_q of x') - z*(window_q of x) over the distinct patches q whose
        window overlaps patch ``index``: the patch itself and, when the known observables read
        a halo, its left, upper and upper-left neighbours (their halos end in its first
        column, row and site; for ``"ising"``, the bonds they own that point into the patch).
        The windows read x' outside patch ``index`` as x (the snapshot's frozen spins).

        Args:
            x: one configuration ``config_shape``.
            index: the replaced patch, in [0, K) (row-major, as ``lattice.tile``); may be traced.
            new_patch: ``patch_shape``, cast to ``x.dtype`` as ``lattice.insert_patch`` does.
            codes: ``encode_patches(x)`` if already computed: the old patch's closure code is
                read from it instead of being recomputed.

        Returns:
            ``(latent_dim,)``. ``z(x) + replacement_increment(...) / K == z(x')``.
        """
        self._check_config(x)
        if new_patch.shape != self.patch_shape:
            raise ValueError(
                f"expected one patch of shape {self.patch_shape}, got {new_patch.shape}."
            )
        (ph, pw), (height, width), halo = self.patch_shape, self.config_shape, self.known.halo
        rows, cols = height // ph, width // pw
        row0, col0 = lattice.patch_origin(self.config_shape, self.patch_shape, index)
        new_patch = new_patch.astype(x.dtype)

        def windows(q_row, q_col):  # window of patch (q_row, q_col) in x and in x'
            r = (q_row * ph + jnp.arange(ph + halo)) % height
            c = (q_col * pw + jnp.arange(pw + halo)) % width
            old = x[r[:, None], c[None, :]]
            # Sites of the replaced patch (wherever the window wraps onto it) read new_patch.
            dr, dc = (r - row0) % height, (c - col0) % width
            inside = (dr < ph)[:, None] & (dc < pw)[None, :]
            new = new_patch[jnp.minimum(dr, ph - 1)[:, None], jnp.minimum(dc, pw - 1)[None, :]]
            return old, jnp.where(inside, new, old)

        # Distinct patches whose window overlaps patch index: offsets up/left by 0 or 1
        # (halo <= patch side), deduplicated on the patch grid (one row/column of patches).
        shifts = (0, 1) if halo else (0,)
        offsets = sorted({(a % rows, b % cols) for a in shifts for b in shifts})
        p_row, p_col = index // cols, index % cols
        pairs = [windows((p_row - a) % rows, (p_col - b) % cols) for a, b in offsets]
        old, new = (jnp.stack(w) for w in zip(*pairs, strict=True))
        known = jnp.sum(jax.vmap(self.known.fn)(new) - jax.vmap(self.known.fn)(old), axis=0)
        known = known.astype(jnp.float32)
        if self.local_encoder is None:
            return known
        if codes is None:
            old_code = self.local_encoder(lattice.extract_patch(x, index, self.patch_shape))
        else:
            old_code = codes[index, self.known_dim :]
        return jnp.concatenate([known, self.local_encoder(new_patch) - old_code])

    def _code(self, window, patch) -> Float[Array, " d"]:
        known = self.known.fn(window).astype(jnp.float32)
        if self.local_encoder is None:
            return known
        return jnp.concatenate([known, self.local_encoder(patch)])

    def decode(self, z: Float[Array, " d"]) -> Float[Array, "H W"]:
        """The decoder output: spin logits ``(H, W)`` or a field ``(n_cells, n_species)``."""
        self._require_decoder()
        return self.decoder(z)

    def reconstruction_loss(self, x: Shaped[Array, "H W"]) -> Float[Array, ""]:
        """Reconstruction loss of one configuration: BCE (spins) or MSE (fields)."""
        self._require_decoder()
        return self.decoder.reconstruction_loss(self.encode(x), x)

    def _patch_shape(self, patch_size) -> tuple[int, int]:
        if patch_size is None:
            return self.patch_shape
        if isinstance(patch_size, int):
            # A square spin patch, or that many cells of a 1D field (all species).
            candidates = {(patch_size, patch_size), (patch_size, self.config_shape[1])}
            shape = self.patch_shape if self.patch_shape in candidates else None
        else:
            shape = tuple(patch_size)
        if shape != self.patch_shape:
            raise ValueError(
                f"this model was built for patches of shape {self.patch_shape}, got "
                f"patch_size={patch_size!r}; build a model for that patch size instead."
            )
        return shape

    def _check_config(self, x):
        if x.shape != self.config_shape:
            raise ValueError(
                f"expected one configuration of shape {self.config_shape}, got {x.shape}; "
                "the model acts on one sample, use jax.vmap for batches."
            )

    def _require_decoder(self):
        if self.decoder is None:
            raise ValueError(
                "this autoencoder has closure_dim = 0: the latent is the known observables "
                "alone and there is no decoder to train or evaluate."
            )


def make_spin_autoencoder(
    key: PRNGKeyArray,
    lattice_shape: tuple[int, int] | int,
    patch_shape: tuple[int, int] | int,
    closure_dim: int = 2,
    known: str = "ising",
    base_channels: int = 32,
) -> ClosureAutoencoder:
    """Closure autoencoder for 2D spins: ``SpinPatchCNN`` encoder, ``SpinDecoder``.

    Reference (Ising): 64x64 lattice, 16x16 patches, known = (m, domain-wall density),
    closure_dim = 2, base_channels = 32. Curie-Weiss: known = "magnetisation",
    closure_dim = 0. All arguments but ``key`` are JSON-friendly hyperparameters.

    ``known`` names a ``KNOWN_OBSERVABLES`` entry: ``"ising"`` (default) is (m, domain-wall
    density) with each patch owning its right and lower bonds, read through the lattice, so
    that z* is the lattice's own (m, ``observables.domain_wall_density``) for every patch
    size (``ising_observables``); ``"ising_periodic"`` is the reference's definition, bonds
    wrapping around each patch (``ising_periodic_observables``; hyperparameters saved before
    the change, format 1, rebuild with it: see ``jmacro.models.registry``).
    """
    config_shape = lattice.check_patch_size(_pair(lattice_shape), _pair(lattice_shape))
    patch = lattice.check_patch_size(config_shape, _pair(patch_shape))
    known = known_observables(known)
    closure_dim = _check_closure_dim(closure_dim)
    skeleton = ClosureAutoencoder(None, None, known, config_shape, patch)
    if closure_dim == 0:
        return skeleton
    key_enc, key_dec = jr.split(key)
    encoder = SpinPatchCNN(patch, closure_dim, key_enc, base_channels)
    decoder = SpinDecoder(skeleton.known_dim + closure_dim, config_shape, key_dec, base_channels)
    return ClosureAutoencoder(encoder, decoder, known, config_shape, patch)


def make_field_autoencoder(
    key: PRNGKeyArray,
    num_cells: int,
    patch_cells: int,
    num_species: int = 2,
    closure_per_species: int = 1,
    known: str = "field_means",
    width_size: int = 32,
    depth: int = 2,
) -> ClosureAutoencoder:
    """Closure autoencoder for 1D fields ``(num_cells, num_species)``: ``FieldPatchMLP``
    encoder (closure_dim = num_species * closure_per_species) and ``FieldDecoder``.

    Reference (predator-prey): 200 cells, 40-cell patches (K = 5), 2 species, 1 closure
    number per species, MLP widths 32, 32. All arguments but ``key`` are JSON-friendly.
    """
    num_cells = check_positive_int(num_cells, "num_cells")
    patch_cells = check_positive_int(patch_cells, "patch_cells")
    num_species = check_positive_int(num_species, "num_species")
    config_shape, patch = (num_cells, num_species), (patch_cells, num_species)
    lattice.check_patch_size(config_shape, patch)
    known = known_observables(known)
    skeleton = ClosureAutoencoder(None, None, known, config_shape, patch)
    if _check_closure_dim(closure_per_species) == 0:
        return skeleton
    key_enc, key_dec = jr.split(key)
    encoder = FieldPatchMLP(patch, closure_per_species, key_enc, width_size, depth)
    latent_dim = skeleton.known_dim + num_species * closure_per_species
    decoder = FieldDecoder(latent_dim, config_shape, key_dec, width_size, depth)
    return ClosureAutoencoder(encoder, decoder, known, config_shape, patch)


def _grow(shape: tuple[int, int], halo: int) -> tuple[int, int]:
    return (shape[0] + halo, shape[1] + halo)


def _pair(side) -> tuple[int, int]:
    return (side, side) if isinstance(side, int) else tuple(side)


def _check_closure_dim(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"the closure dimension must be an int >= 0, got {value!r}.")
    return value
