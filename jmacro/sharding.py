"""Shard the batch axis of batched simulations over devices with ``jax.sharding``.

Systems act on ONE configuration; batching is ``jax.vmap`` at the call site and scale-out is
sharding the batch (leading) axis over a 1D device mesh named ``"batch"``. Every batch element
is independent, so sharding needs no communication and gives bit-identical results to the
unsharded ``jax.jit(jax.vmap(fn))``. With one device nothing changes.

One host, several GPUs: automatic. ``batch_mesh()`` spans ``jax.local_devices()``::

    model = GlauberIsing(2.5, 0.1)
    evolve = sharded_vmap(lambda s, k: model.advance_time(s, k, 0.5))
    spins = evolve(spins, keys)          # (B, H, W), (B,) keys -> (B, H, W) sharded over GPUs

Several hosts: start one process per host, call ``jax.distributed.initialize()`` first in
each, then build the mesh over the global devices, ``batch_mesh(jax.devices())``, and pass it
as ``mesh=``. Every process runs the same program on the GLOBAL batch: pass the same full
inputs in every process (cheap when they come from one seed) and each process uploads only
the slices for its own devices; or pass global arrays built from per-process data with
``jax.make_array_from_process_local_data``. Outputs are global arrays: ``np.asarray`` works
on ``out.addressable_shards`` only; ``jax.experimental.multihost_utils.process_allgather``
gathers everything. See ``docs/sharding.md``.

Uneven batches: a ``NamedSharding`` needs equal shards, so ``shard_batch`` raises if the batch
does not divide by the device count rather than silently returning a longer batch than it was
given; ``pad_batch`` pads explicitly (returning the pad count), and ``sharded_vmap`` pads and
slices back by itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"
"""Name of the mesh axis that the leading (batch) axis of every batched array is split over."""


def batch_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1D ``Mesh`` named ``"batch"`` over ``devices`` (default: ``jax.local_devices()``).

    Pass ``jax.devices()`` (all processes' devices) after ``jax.distributed.initialize()`` to
    shard over several hosts.
    """
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("batch_mesh needs at least one device; got an empty list.")
    return Mesh(np.asarray(devices, dtype=object), (BATCH_AXIS,))


def batch_sharding(mesh: Mesh | None = None) -> NamedSharding:
    """``NamedSharding`` splitting the leading axis over the mesh's ``"batch"`` axis."""
    return NamedSharding(batch_mesh() if mesh is None else mesh, PartitionSpec(BATCH_AXIS))


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray)


def batch_size(tree: Any) -> int:
    """The common leading-axis length of every array leaf of ``tree``.

    Raises:
        ValueError: no array leaves, a 0-d leaf, or leaves with different leading lengths.
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError("the batch has no array leaves.")
    sizes = set()
    for leaf in leaves:
        if not _is_array(leaf) or leaf.ndim == 0:
            raise ValueError(
                f"every batched leaf needs a leading batch axis; got {type(leaf).__name__} of "
                f"shape {getattr(leaf, 'shape', None)}. Mark unbatched arguments with "
                "in_axes=None."
            )
        sizes.add(leaf.shape[0])
    if len(sizes) != 1:
        raise ValueError(f"batched leaves disagree on the batch size: {sorted(sizes)}.")
    return sizes.pop()


def pad_batch(tree: Any, multiple: int) -> tuple[Any, int]:
    """Pad the leading axis of every leaf up to a multiple of ``multiple``.

    Padding repeats the LAST batch element, so padded entries are valid inputs (a zero
    lattice or an all-zero key might not be) whose results are simply discarded.

    Returns:
        ``(padded_tree, num_pad)``: leaves of shape ``(B + num_pad, ...)``; slice results
        with ``[:B]`` (or ``[:-num_pad]`` when ``num_pad > 0``).
    """
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be a positive integer, got {multiple!r}.")
    size = batch_size(tree)
    if size == 0:
        raise ValueError("cannot pad an empty batch (size 0).")
    num_pad = -size % multiple
    if num_pad == 0:
        return tree, 0
    # A gather works for numpy arrays, JAX arrays and typed PRNG key arrays alike.
    index = np.minimum(np.arange(size + num_pad), size - 1)
    return jax.tree.map(lambda x: x[index], tree), num_pad


def shard_batch(tree: Any, mesh: Mesh | None = None) -> Any:
    """Place every leaf of ``tree`` on the mesh, split along its leading (batch) axis.

    Args:
        tree: a pytree of arrays sharing the leading batch size ``B``.
        mesh: a mesh with a ``"batch"`` axis (default ``batch_mesh()``).

    Returns:
        The same tree of ``jax.Array`` with ``NamedSharding(mesh, P("batch"))``.

    Raises:
        ValueError: ``B`` does not divide by the number of devices; use ``pad_batch`` first
            (or ``sharded_vmap``, which pads and slices back for you).
    """
    mesh = batch_mesh() if mesh is None else mesh
    size = batch_size(tree)
    num_devices = mesh.shape[BATCH_AXIS]
    if size % num_devices:
        raise ValueError(
            f"batch size {size} does not divide by the {num_devices} devices of the mesh. "
            f"Use pad_batch(tree, {num_devices}) and slice the results, or pick a multiple "
            f"of {num_devices}."
        )
    return _place(tree, NamedSharding(mesh, PartitionSpec(BATCH_AXIS)))


def replicate(tree: Any, mesh: Mesh | None = None) -> Any:
    """Place a full copy of every array leaf of ``tree`` on each device of the mesh.

    Non-array leaves (Python numbers, ...) are returned unchanged.
    """
    mesh = batch_mesh() if mesh is None else mesh
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: _place(x, replicated) if _is_array(x) else x, tree)


def _place(tree: Any, sharding: NamedSharding) -> Any:
    """``device_put`` that also works when the mesh spans several processes (hosts)."""
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: _place_global(x, sharding), tree)


def _place_global(x: Any, sharding: NamedSharding) -> jax.Array:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, sharding)  # already a global array: reshard in place
    # Multi-process: device_put refuses typed PRNG keys here and runs a cross-process
    # equality check on everything else; instead every process uploads its addressable
    # slices of the (identical) global value.
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _place_global(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _per_argument_axes(in_axes: Any, num_args: int) -> tuple[int | None, ...]:
    if in_axes is None or isinstance(in_axes, int):
        axes = (in_axes,) * num_args
    elif isinstance(in_axes, Sequence) and len(in_axes) == num_args:
        axes = tuple(in_axes)
    else:
        raise ValueError(
            f"in_axes must be 0, None, or a sequence with one entry per positional argument "
            f"({num_args}), got {in_axes!r}."
        )
    if any(axis not in (0, None) or isinstance(axis, bool) for axis in axes):
        raise ValueError(
            f"sharded_vmap maps over the leading axis only: in_axes entries must be 0 or None, "
            f"got {in_axes!r}. Move the batch axis first with jnp.moveaxis."
        )
    if all(axis is None for axis in axes):
        raise ValueError("sharded_vmap needs at least one batched argument (in_axes=0).")
    return axes


def sharded_vmap(
    fn: Callable[..., Any],
    in_axes: int | Sequence[int | None] | None = 0,
    *,
    mesh: Mesh | None = None,
) -> Callable[..., Any]:
    """``jax.jit(jax.vmap(fn, in_axes))`` with the batch axis sharded over the mesh's devices.

    Batched arguments (``in_axes`` entry 0) are split along their leading axis over the
    ``"batch"`` axis of ``mesh``; unbatched ones (``None``) are replicated on every device.
    Outputs come back as ``(B, ...)`` arrays sharded the same way. If ``B`` does not divide by
    the device count, the inputs are padded by repeating the last element (``pad_batch``) and
    the outputs sliced back to ``B`` (the slice is no longer evenly sharded; pick ``B`` a
    multiple of the device count to avoid that copy). Results equal those of
    ``jax.jit(jax.vmap(fn, in_axes))`` bit for bit, since batch elements never interact.

    Call the result from Python (the driver), not inside another ``jit``: placement happens
    eagerly. Only positional arguments are supported.

    Args:
        fn: acts on ONE element, e.g. ``lambda spins, key: model.advance_time(spins, key, t)``.
        in_axes: 0 (all arguments batched), or one entry per positional argument, each 0 or
            None. Pytree-structured ``in_axes`` are not supported.
        mesh: a mesh with a ``"batch"`` axis; default ``batch_mesh()`` (all local devices).
            For several hosts pass ``batch_mesh(jax.devices())`` (see the module docstring).

    Returns:
        A function of the same positional arguments, with the batch axis in front.
    """
    mesh = batch_mesh() if mesh is None else mesh
    batched = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
    num_devices = mesh.shape[BATCH_AXIS]
    vmap_axes = tuple(in_axes) if isinstance(in_axes, Sequence) else in_axes
    compiled = {}

    def mapped(axes, *placed):
        # Built once per argument pattern, so that the jit cache is reused across calls.
        # ``shard_map``: each device runs the vmapped function on its own slice, with no
        # collective (a batched while-loop, e.g. a simulator's, runs to its own slice's end
        # instead of all devices agreeing on every iteration).
        if axes not in compiled:
            specs = tuple(PartitionSpec(BATCH_AXIS) if a == 0 else PartitionSpec() for a in axes)
            per_device = jax.shard_map(
                jax.vmap(fn, in_axes=vmap_axes),
                mesh=mesh,
                in_specs=specs,
                out_specs=PartitionSpec(BATCH_AXIS),
                check_vma=False,
            )
            compiled[axes] = jax.jit(per_device, out_shardings=batched)
        return compiled[axes](*placed)

    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        axes = _per_argument_axes(in_axes, len(args))
        batched_args = [arg for arg, axis in zip(args, axes, strict=True) if axis == 0]
        size = batch_size(batched_args)
        placed = []
        for arg, axis in zip(args, axes, strict=True):
            if axis == 0:
                placed.append(shard_batch(pad_batch(arg, num_devices)[0], mesh))
            else:
                placed.append(replicate(arg, mesh))
        out = mapped(axes, *placed)
        if size % num_devices:
            out = jax.tree.map(lambda x: x[:size], out)
        return out

    return call


def map_in_batches(
    fn: Callable[..., Any],
    num: int,
    *arrays: Any,
    batch_size: int,
    dtype: Any = None,
    desc: str = "",
    unit: str = "it",
    progress: bool = False,
    check: Callable[[Any, int], None] | None = None,
) -> Any:
    """``fn(*elements, index)`` over ``num`` elements, in batches: the host-side driver loop.

    ``arrays`` are host arrays (NumPy, memory maps) with ``num`` rows; element ``i`` gets their
    row ``i`` and its own index (to derive its key, e.g. ``fold_in(key, index)``, so results do
    not depend on ``batch_size``). Each batch of ``batch_size`` rows (cast to ``dtype`` if given)
    runs through one ``sharded_vmap(fn)``, so the jitted function compiles once per batch shape.
    Returns ``fn``'s output pytree as NumPy arrays with ``num`` rows. ``check(outputs, start)``
    is called on each batch's NumPy outputs (e.g. to fail early on a blow-up); a tqdm bar shows
    progress if ``progress``.
    """
    from tqdm.auto import tqdm

    if num <= 0:
        raise ValueError(f"nothing to map over: num = {num}.")
    run = sharded_vmap(fn)
    out, treedef = None, None
    with tqdm(total=num, desc=desc, unit=unit, disable=not progress) as bar:
        for start in range(0, num, batch_size):
            stop = min(start + batch_size, num)
            batch = [jnp.asarray(np.asarray(a[start:stop]), dtype) for a in arrays]
            pieces = jax.tree.map(np.asarray, run(*batch, jnp.arange(start, stop)))
            if check is not None:
                check(pieces, start)
            leaves, treedef = jax.tree.flatten(pieces)
            if out is None:
                out = [np.empty((num, *leaf.shape[1:]), leaf.dtype) for leaf in leaves]
            for target, leaf in zip(out, leaves, strict=True):
                target[start:stop] = leaf
            bar.update(stop - start)
    return jax.tree.unflatten(treedef, out)
