"""Threefry-2x32 random words with an unrolled lowering, bit-identical to ``jax.random.bits``.

On XLA:CPU jax lowers the Threefry hash as a rolled loop of five round groups (5-15 ns per
32-bit word on a 2-core CPU); the same arithmetic written out as straight-line jnp code runs
at about 1-2 ns per word and gives the same bits. ``random_bits(key, shape)`` equals
``jax.random.bits(key, shape)`` (uint32, default threefry key, ``jax_threefry_partitionable``
on, the default since jax 0.5) and is tested against it in ``tests/test_kernels.py``.

``block_bits(key_data, block, size)`` gives the words of one block of a stream: word j of block
b is word ``b * 2**32 + j`` of ``jax.random.bits(key, (2**64,))`` (the partitionable scheme
hashes the 64-bit element index split into its high and low 32-bit halves). The uniformized
drivers draw the words of a block of attempts this way, without splitting keys.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray, UInt32

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotate_left(x, r):
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k0, k1, x0, x1):
    """The Threefry-2x32 hash (20 rounds) of the counter pair ``(x0, x1)`` under the key
    ``(k0, k1)``, unrolled; all uint32, broadcast together. Same bits as jax's primitive."""
    ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    x0 = x0 + ks[0]
    x1 = x1 + ks[1]
    for group in range(5):
        for r in _ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, r) ^ x0
        x0 = x0 + ks[(group + 1) % 3]
        x1 = x1 + ks[(group + 2) % 3] + np.uint32(group + 1)
    return x0, x1


def key_words(key: PRNGKeyArray) -> tuple[UInt32[Array, ""], UInt32[Array, ""]]:
    """The two uint32 words of a default (threefry) PRNG key."""
    data = jax.random.key_data(key)
    if data.shape != (2,):
        raise ValueError(f"expected a threefry2x32 key (2 words), got key data {data.shape}.")
    return data[0], data[1]


def block_bits(
    k0: UInt32[Array, ""], k1: UInt32[Array, ""], block: UInt32[Array, ""] | int, size: int
) -> UInt32[Array, " size"]:
    """Words ``block * 2**32 + [0, size)`` of the key's partitionable random-bits stream."""
    hi = jnp.asarray(block, jnp.uint32)
    lo = jnp.arange(size, dtype=jnp.uint32)
    b0, b1 = threefry2x32(k0, k1, hi, lo)
    return b0 ^ b1


def block_pairs(
    k0: UInt32[Array, ""], k1: UInt32[Array, ""], block: UInt32[Array, ""] | int, shape
) -> tuple[UInt32[Array, "..."], UInt32[Array, "..."]]:
    """Both output words of the hash of counters ``(block, [0, prod(shape)))``: two
    independent uniform words per hash (the XOR that ``jax.random.bits`` returns costs the
    same hash for one word)."""
    size = int(np.prod(shape, dtype=np.int64))
    hi = jnp.asarray(block, jnp.uint32)
    b0, b1 = threefry2x32(k0, k1, hi, jnp.arange(size, dtype=jnp.uint32))
    return b0.reshape(shape), b1.reshape(shape)


def random_bits(key: PRNGKeyArray, shape: tuple[int, ...]) -> UInt32[Array, "..."]:
    """``jax.random.bits(key, shape)`` (uint32) through the unrolled hash."""
    size = int(np.prod(shape, dtype=np.int64))
    if size >= 2**32:
        raise ValueError(f"random_bits supports fewer than 2**32 words, got shape {shape}.")
    k0, k1 = key_words(key)
    return block_bits(k0, k1, 0, size).reshape(shape)
