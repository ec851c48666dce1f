"""A generic training loop: one jitted step, AdamW(+AMSGrad), plateau LR, early stopping,
resumable atomic checkpoints.

The same ``fit`` trains the closure autoencoder (``reconstruction_loss`` on configurations)
and the SDE (``increment_loss`` on ``IncrementPairs``): a loss is any
``loss_fn(model, batch, key) -> scalar`` and the data is any pytree of arrays sharing their
leading (sample) axis, on the host (NumPy, possibly memory-mapped) or on the device. Every
leaf is batched with the same indices, in the host loop and with ``device_epochs`` alike: the
``(n, k)`` ``condition`` of conditioned ``IncrementPairs`` travels with its pairs, and a
``None`` leaf (unconditioned pairs) is an empty subtree that batching skips.

Per epoch: the training set is shuffled by a NumPy generator seeded from ``(key, epoch)`` (so
a resumed run sees exactly the batches an uninterrupted one would), every batch takes one
``make_step``; then the validation loss is computed, fed to ``reduce_on_plateau`` (once per
epoch), the best model is kept, a checkpoint is written, and early stopping is checked.

Optimiser (reference defaults): AdamW with AMSGrad, lr 1e-3, no weight decay; learning rate
halved after ``plateau_patience`` epochs without relative improvement 1e-4 (PyTorch
``ReduceLROnPlateau`` semantics: the cut happens on the (patience + 1)-th bad epoch), floored
at 5e-6. Arrays inside ``AbstractNonTrainable`` modules (latent normalisers) are frozen.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import PRNGKeyArray, PyTree
from tqdm.auto import tqdm

from jmacro._checks import check_positive_int
from jmacro.models.base import AbstractNonTrainable
from jmacro.training import checkpoint as ckpt

logger = logging.getLogger(__name__)

PLATEAU_METRICS = ("val", "train")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of ``fit`` (defaults: the reference's SDE training).

    Attributes:
        learning_rate: initial learning rate (reference: 1e-3 SDE, 1e-2 Curie-Weiss SDE, 2e-4
            autoencoder).
        batch_size: training batch size (reference: 1024 SDE, 512 autoencoder).
        num_epochs: maximum number of epochs (reference: 100 SDE, 10 autoencoder).
        weight_decay: decoupled (AdamW) weight decay.
        amsgrad: AMSGrad second-moment maximum (reference: on).
        plateau_factor: learning-rate factor on a plateau.
        plateau_patience: bad epochs tolerated before a cut (PyTorch semantics).
        plateau_rtol: relative improvement that counts (PyTorch ``threshold``, 1e-4).
        min_learning_rate: floor of the learning rate.
        plateau_metric: ``"val"`` (validation loss) or ``"train"`` (mean training loss of the
            epoch, which is what the reference scripts feed their scheduler).
        early_stopping_patience: stop after this many epochs without a new best validation
            loss; ``None`` (default, as the reference) trains all epochs.
        keep_best: return the model with the best validation loss (default) rather than the
            last one (the reference keeps the last).
        drop_last: drop the last, smaller, training batch of each epoch.
        val_batch_size: validation batch size (default: ``batch_size``).
        show_progress: tqdm progress bar with the running loss.
        device_epochs: copy the training data to the device once and run each epoch's full
            batches as one jitted ``lax.scan`` (same batches, keys and updates as the
            step-by-step loop; for data that fit in device memory, e.g. latent pairs). Small
            models are bound by per-step dispatch: measured 2.3x faster for the latent SDE
            (d = 4, batch 256) on a 2-core CPU. Not for convolutional models on XLA:CPU: inside
            the scan's loop the convolutions are not rewritten to the fast (YNNPACK) kernels;
            the spin autoencoder's gradient ran ~13x slower there (issue 12); use
            ``micro_batch`` for those.
        micro_batch: compute each batch's loss and gradient over micro-batches of this many
            samples, one per local device at a time (one jitted ``shard_map`` call per D
            micro-batches, the remainder in one call), then take one optimiser step with
            their size-weighted mean: the same loss, gradient and update as the whole batch
            up to float rounding, for a ``loss_fn`` that is the mean over the batch of a
            per-sample loss that does not use the key (the autoencoder's
            ``reconstruction_loss``); validation runs in micro-batches too. For convolutional
            models on XLA:CPU: small micro-batches stay in cache, stop page-faulting fresh
            large buffers every step and keep every core busy; the paper-width spin
            autoencoder trains about 4x faster (issue 12, ``benchmarks/bench_training.py``).
            ``None``: whole batches.
    """

    learning_rate: float = 1e-3
    batch_size: int = 1024
    num_epochs: int = 100
    weight_decay: float = 0.0
    amsgrad: bool = True
    plateau_factor: float = 0.5
    plateau_patience: int = 5
    plateau_rtol: float = 1e-4
    min_learning_rate: float = 5e-6
    plateau_metric: str = "val"
    early_stopping_patience: int | None = None
    keep_best: bool = True
    drop_last: bool = False
    val_batch_size: int | None = None
    show_progress: bool = True
    device_epochs: bool = False
    micro_batch: int | None = None

    def __post_init__(self):
        for name in ("batch_size", "num_epochs", "plateau_patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        for name in ("val_batch_size", "early_stopping_patience", "micro_batch"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be None or a positive int, got {value!r}.")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be finite and > 0, got {self.learning_rate}.")
        if not 0 < self.min_learning_rate <= self.learning_rate:
            raise ValueError(
                f"min_learning_rate must be in (0, learning_rate = {self.learning_rate}], got "
                f"{self.min_learning_rate}."
            )
        if not 0 < self.plateau_factor < 1:
            raise ValueError(f"plateau_factor must be in (0, 1), got {self.plateau_factor}.")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}.")
        if self.micro_batch is not None and self.device_epochs:
            raise ValueError("micro_batch and device_epochs cannot be combined.")
        if self.plateau_metric not in PLATEAU_METRICS:
            raise ValueError(
                f"plateau_metric must be one of {PLATEAU_METRICS}, got {self.plateau_metric!r}."
            )


def micro_batch_on_cpu(size: int) -> int | None:
    """``size`` when JAX's default backend is the CPU, else ``None``: the
    ``TrainConfig.micro_batch`` for a convolutional model, micro-batches on XLA:CPU and whole
    batches on accelerators (which want large batches)."""
    size = check_positive_int(size, "micro-batch size")
    return size if jax.default_backend() == "cpu" else None


class NonFiniteLossError(FloatingPointError):
    """A training or validation loss was NaN or infinite.

    Attributes:
        epoch: 1-based epoch.
        batch: 1-based batch within the epoch (``None`` for the validation loss).
    """

    def __init__(self, value: float, epoch: int, batch: int | None, num_batches: int):
        self.value, self.epoch, self.batch = value, epoch, batch
        where = (
            f"validation loss at epoch {epoch}"
            if batch is None
            else f"training loss at epoch {epoch}, batch {batch} of {num_batches}"
        )
        super().__init__(
            f"{where} is {value}. Check the data for NaN/inf (e.g. dt = inf from a stuck "
            "simulator), lower the learning rate, or raise the covariance jitter eps."
        )


class EpochRecord(NamedTuple):
    """One line of the training history (``epoch`` is 1-based)."""

    epoch: int
    train_loss: float
    val_loss: float
    learning_rate: float
    seconds: float


class FitResult(NamedTuple):
    """What ``fit`` returns.

    Attributes:
        model: the best model by validation loss (the last one if ``keep_best`` is off).
        last_model: the model after the last completed epoch.
        history: one ``EpochRecord`` per completed epoch (resumed epochs included).
        best_epoch: 1-based epoch of the best validation loss.
        best_val_loss: that loss.
        stopped_early: whether early stopping ended the run.
    """

    model: Any
    last_model: Any
    history: list[EpochRecord]
    best_epoch: int
    best_val_loss: float
    stopped_early: bool


# ------------------------------------------------------------------------ optimiser pieces
def trainable_mask(model: PyTree) -> PyTree:
    """Filter spec for ``eqx.partition``: floating arrays, except inside non-trainables."""

    def mask(node):
        if isinstance(node, AbstractNonTrainable):
            return False
        return eqx.is_inexact_array(node)

    return jax.tree.map(mask, model, is_leaf=lambda n: isinstance(n, AbstractNonTrainable))


def make_optimizer(
    config: TrainConfig,
) -> tuple[optax.GradientTransformation, optax.GradientTransformationExtraArgs]:
    """``(step_optimizer, plateau)``: AdamW(+AMSGrad) and ``optax.contrib.reduce_on_plateau``.

    They are kept apart because the plateau logic must see the validation loss once per
    epoch, while the step optimiser runs every batch; ``make_step`` scales its updates by the
    plateau state's ``scale``.
    """
    moments = optax.scale_by_amsgrad() if config.amsgrad else optax.scale_by_adam()
    step_optimizer = optax.chain(
        moments,
        optax.add_decayed_weights(config.weight_decay),
        optax.scale_by_learning_rate(config.learning_rate),
    )
    plateau = optax.contrib.reduce_on_plateau(**_plateau_settings(config))
    return step_optimizer, plateau


def _plateau_settings(config: TrainConfig) -> dict[str, float]:
    return dict(
        factor=config.plateau_factor,
        # optax cuts when the bad-epoch count reaches `patience`, PyTorch when it exceeds it.
        patience=config.plateau_patience + 1,
        rtol=config.plateau_rtol,
        min_scale=config.min_learning_rate / config.learning_rate,
    )


def init_opt_state(model: PyTree, config: TrainConfig) -> tuple[Any, Any]:
    """``(step_state, plateau_state)`` for the trainable part of ``model``."""
    step_optimizer, plateau = make_optimizer(config)

    @eqx.filter_jit
    def init(model):
        params = eqx.filter(model, trainable_mask(model))
        return step_optimizer.init(params), plateau.init(params)

    return init(model)


def build_train_step(
    loss_fn: Callable[[Any, Any, PRNGKeyArray], jax.Array], config: TrainConfig
) -> Callable:
    """The ``make_step(model, opt_state, batch, key) -> (model, opt_state, loss)``: one jitted
    step, or with ``config.micro_batch`` a host function of several jitted calls (see
    ``TrainConfig.micro_batch``).

    Cached on the loss function and the optimiser settings, so that repeated ``fit`` calls
    (resumed runs, sweeps) reuse the compiled step.
    """
    optimiser = (config.learning_rate, config.weight_decay, config.amsgrad)
    if config.micro_batch is not None:
        return _micro_batch_step(loss_fn, *optimiser, config.micro_batch)
    return _train_step(loss_fn, *optimiser)


def _step_optimizer(learning_rate, weight_decay, amsgrad):
    config = TrainConfig(
        learning_rate=learning_rate,
        min_learning_rate=learning_rate,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
    )
    return make_optimizer(config)[0]


def _apply_gradients(step_optimizer, params, static, grads, opt_state):
    """The model and optimiser state after one step of ``step_optimizer`` on ``grads``,
    scaled by the plateau state's learning-rate factor."""
    step_state, plateau_state = opt_state
    # optax's bias correction raises a Python float to an int32 step count, which strict
    # dtype promotion (the test suite's setting) refuses; jmacro's own arithmetic stays
    # under whatever promotion the caller chose.
    with jax.numpy_dtype_promotion("standard"):
        updates, step_state = step_optimizer.update(grads, step_state, params)
    updates = jax.tree.map(lambda u: plateau_state.scale * u, updates)
    model = eqx.combine(optax.apply_updates(params, updates), static)
    return model, (step_state, plateau_state)


@functools.lru_cache(maxsize=32)
def _train_step(loss_fn, learning_rate, weight_decay, amsgrad):
    step_optimizer = _step_optimizer(learning_rate, weight_decay, amsgrad)

    @eqx.filter_jit
    def make_step(model, opt_state, batch, key):
        params, static = eqx.partition(model, trainable_mask(model))

        def loss_of(params):
            return loss_fn(eqx.combine(params, static), batch, key)

        loss, grads = jax.value_and_grad(loss_of)(params)
        model, opt_state = _apply_gradients(step_optimizer, params, static, grads, opt_state)
        return model, opt_state, loss

    return make_step


@functools.lru_cache(maxsize=32)
def _micro_batch_step(loss_fn, learning_rate, weight_decay, amsgrad, micro_batch):
    """``make_step`` accumulating the gradient over micro-batches (``TrainConfig.micro_batch``):
    the size-weighted sums of the micro-batches' losses and gradients (``_micro_batch_sums``),
    divided by the batch size, then the optimiser step of ``_train_step``."""
    step_optimizer = _step_optimizer(learning_rate, weight_decay, amsgrad)
    weighted = _weighted_loss(loss_fn, True)

    @eqx.filter_jit
    def update(model, opt_state, sums, size):
        loss, grads = jax.tree.map(lambda *a: sum(x.sum(0) for x in a) / size, *sums)
        params, static = eqx.partition(model, trainable_mask(model))
        model, opt_state = _apply_gradients(step_optimizer, params, static, grads, opt_state)
        return model, opt_state, loss

    def make_step(model, opt_state, batch, key):
        # Committed to one device from the first step on, as the updated model is: an
        # uncommitted initial model would make the second step compile everything again.
        home = _devices_for(model)[0]
        model, opt_state, key = _to_device((model, opt_state, key), home)
        sums, size = _micro_batch_sums(weighted, model, batch, key, micro_batch)
        return update(model, opt_state, sums, jnp.asarray(size, jnp.float32))

    return make_step


@functools.lru_cache(maxsize=32)
def _weighted_loss(loss_fn, with_grad):
    """``(model, batch, key) -> n loss_fn(...)``, and with ``with_grad`` n times the gradient
    with respect to the trainable arrays too (n the batch size; key None when not)."""

    def weighted(model, batch, key):
        size = _num_samples(batch, "batch")
        if not with_grad:
            return size * loss_fn(model, batch, None)
        params, static = eqx.partition(model, trainable_mask(model))

        def loss_of(params):
            return loss_fn(eqx.combine(params, static), batch, key)

        return jax.tree.map(lambda a: size * a, jax.value_and_grad(loss_of)(params))

    return weighted


_SPLIT = "batch"


def _micro_batch_sums(weighted, model, data, key, micro_batch):
    """Sum of ``weighted(model, micro-batch, key)`` over the micro-batches of ``data`` (host or
    device arrays), as a list of pytrees with a leading axis to sum over; and the size of data.

    The local devices (D of them) take micro-batches D at a time: one jitted call shards D
    consecutive micro-batches over a 1D mesh, each device adding its own to its running sums
    (one compiled program for all devices). The remaining < D micro_batch samples, if any, are
    one call on the model's device. Calls are dispatched asynchronously; nothing is read.
    """
    size = _num_samples(data, "data")
    devices = _devices_for(model)
    group = micro_batch * len(devices)
    whole = size - size % group
    arrays, skeleton = eqx.partition(model, eqx.is_array)
    parts = []
    for mesh_devices, start, stop, step in (
        (devices, 0, whole, group),
        (devices[:1], whole, size, size - whole),
    ):
        if stop == start:
            continue
        mesh = jax.sharding.Mesh(np.asarray(mesh_devices, dtype=object), (_SPLIT,))
        split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(_SPLIT))
        # One copy of the model per device, split over the mesh as the data are: a model
        # replicated over the mesh is device-invariant, and differentiating it inside
        # shard_map would sum the gradients over the devices.
        rows = len(mesh_devices)
        copies = jax.tree.map(lambda a, n=rows: jnp.broadcast_to(a, (n, *a.shape)), arrays)
        copies = jax.device_put(copies, split)
        key_here = _to_device(key, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        chunks = [
            jax.device_put(jax.tree.map(lambda a, s=s, e=s + step: a[s:e], data), split)
            for s in range(start, stop, step)
        ]
        run = _sharded_sum(weighted, mesh)
        sums = _zero_sums(weighted, mesh, model, chunks[0], key)
        for chunk in chunks:
            sums = run(sums, copies, skeleton, chunk, key_here)
        parts.append(_to_device(sums, devices[0]))
    return parts, size


@functools.lru_cache(maxsize=64)
def _sharded_sum(weighted, mesh):
    """Jitted ``(sums, copies, skeleton, batch, key) -> sums + weighted(model, batch, key)``,
    ``copies`` (the model's arrays, one row per device), ``batch`` and ``sums`` split over
    ``mesh``, ``key`` replicated; ``skeleton`` is the rest of the model."""
    spec = jax.sharding.PartitionSpec

    @eqx.filter_jit
    def run(sums, copies, skeleton, batch, key):
        def body(sums, copies, batch, key):
            model = eqx.combine(jax.tree.map(lambda a: a[0], copies), skeleton)
            value = weighted(model, batch, key)
            return jax.tree.map(lambda total, v: total + v[None], sums, value)

        return jax.shard_map(
            body,
            mesh=mesh,
            in_specs=(spec(_SPLIT), spec(_SPLIT), spec(_SPLIT), spec()),
            out_specs=spec(_SPLIT),
        )(sums, copies, batch, key)

    return run


_ZERO_SUMS: dict = {}


def _zero_sums(weighted, mesh, model, batch, key):
    """Zeros shaped as ``_sharded_sum``'s running sums, split over ``mesh`` (cached by shapes:
    tracing the loss every step would cost more than a micro-batch)."""
    leaves, treedef = jax.tree.flatten((model, batch, key))
    signature = tuple((np.shape(a), str(getattr(a, "dtype", type(a)))) for a in leaves)
    cache_key = (weighted, mesh, treedef, signature)
    if cache_key not in _ZERO_SUMS:
        rows = mesh.devices.size
        piece = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct((a.shape[0] // rows, *a.shape[1:]), a.dtype), batch
        )
        shapes = eqx.filter_eval_shape(weighted, model, piece, key)
        split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(_SPLIT))
        zeros = jax.tree.map(lambda a: np.zeros((rows, *a.shape), a.dtype), shapes)
        if len(_ZERO_SUMS) > 64:
            _ZERO_SUMS.clear()
        _ZERO_SUMS[cache_key] = jax.device_put(zeros, split)
    return _ZERO_SUMS[cache_key]


def _to_device(tree, device):
    """``tree`` with its arrays on ``device`` (a device or a sharding; other leaves as they are)."""
    arrays, static = eqx.partition(tree, eqx.is_array)
    return eqx.combine(jax.device_put(arrays, device), static)


def _devices_for(model) -> list:
    """The local devices of the platform ``model``'s arrays live on, theirs first."""
    arrays = [leaf for leaf in jax.tree.leaves(model) if isinstance(leaf, jax.Array)]
    home = next(iter(arrays[0].devices())) if arrays else jax.local_devices()[0]
    others = [d for d in jax.local_devices(backend=home.platform) if d != home]
    return [home, *others]


@functools.lru_cache(maxsize=32)
def build_eval_step(loss_fn: Callable) -> Callable:
    """The jitted ``evaluate(model, batch) -> loss`` (no key: evaluation is deterministic)."""
    return eqx.filter_jit(lambda model, batch: loss_fn(model, batch, None))


@functools.lru_cache(maxsize=32)
def _plateau_step(factor, patience, rtol, min_scale):
    plateau = optax.contrib.reduce_on_plateau(
        factor=factor, patience=patience, rtol=rtol, min_scale=min_scale
    )

    def step(state, value):
        with jax.numpy_dtype_promotion("standard"):  # optax mixes float32 and int32 inside
            return plateau.update({}, state, value=value)[1]

    return jax.jit(step)


# -------------------------------------------------------------------------------- the loop
def fit(
    model: PyTree,
    loss_fn: Callable[[Any, Any, PRNGKeyArray | None], jax.Array],
    train_data: PyTree,
    val_data: PyTree,
    key: PRNGKeyArray,
    config: TrainConfig = TrainConfig(),
    *,
    val_loss_fn: Callable | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    hyperparams: Mapping[str, Any] | None = None,
    callback: Callable[[EpochRecord, Any], None] | None = None,
) -> FitResult:
    """Train ``model`` on ``train_data``, select it on ``val_data``.

    Args:
        model: an Equinox model (arrays in ``AbstractNonTrainable`` parts stay fixed).
        loss_fn: ``loss_fn(model, batch, key) -> scalar``, a batch being ``train_data``
            indexed along its leading axis.
        train_data: pytree of arrays with a common leading axis (host NumPy, memmaps, ...).
        val_data: same structure for validation.
        key: PRNG key for shuffling and per-step keys.
        config: ``TrainConfig``.
        val_loss_fn: validation loss (default ``loss_fn``), e.g. lambda = 1 on full pairs.
        checkpoint_dir: if given, a checkpoint is written after every epoch and, if one is
            already there, training resumes from it (its model hyperparameters must match).
            On exit the best model is also written as ``model.eqx``.
        hyperparams: JSON-friendly model hyperparameters for ``jmacro.models.build_model``,
            stored in ``hyperparams.json``.
        callback: called as ``callback(record, model)`` after each epoch's checkpoint.

    Returns:
        ``FitResult``.

    Raises:
        NonFiniteLossError: a training loss (naming epoch and batch) or a validation loss
            (naming the epoch) is NaN or infinite.
    """
    val_loss_fn = loss_fn if val_loss_fn is None else val_loss_fn
    num_train = _num_samples(train_data, "train_data")
    num_val = _num_samples(val_data, "val_data")
    batch_size = min(config.batch_size, num_train)
    num_batches = num_train // batch_size if config.drop_last else -(-num_train // batch_size)
    val_batch_size = min(config.val_batch_size or config.batch_size, num_val)

    make_step = build_train_step(loss_fn, config)
    if config.micro_batch is None:
        evaluate = build_eval_step(val_loss_fn)
        evaluate_all = lambda m, d: _evaluate(evaluate, m, d, num_val, val_batch_size)  # noqa: E731
    else:
        weighted = _weighted_loss(val_loss_fn, False)
        evaluate_all = lambda m, d: _evaluate_micro_batches(weighted, m, d, config.micro_batch)  # noqa: E731
    plateau_step = _plateau_step(**_plateau_settings(config))
    key_shuffle, key_steps = jr.split(key)
    shuffle_seed = _host_seed(key_shuffle)
    run_epoch = _device_epoch_sum if config.device_epochs else _host_epoch_sum
    data = jax.tree.map(jnp.asarray, train_data) if config.device_epochs else train_data
    state = ckpt.TrainingState(model, init_opt_state(model, config), 0, model, math.inf, 0)
    history: list[EpochRecord] = []
    if checkpoint_dir is not None:
        state, history = _start_or_resume(checkpoint_dir, state, config, hyperparams)
    patience = config.early_stopping_patience
    stopped = lambda: patience is not None and state.epochs_since_improvement >= patience  # noqa: E731

    progress = tqdm(
        total=config.num_epochs * num_batches,
        initial=state.epoch * num_batches,
        disable=not config.show_progress,
        dynamic_ncols=True,
        desc="fit",
    )
    try:
        for epoch in range(state.epoch, config.num_epochs):
            if stopped():
                break
            start = time.perf_counter()
            order = np.random.default_rng([*shuffle_seed, epoch]).permutation(num_train)
            step_keys = jr.split(jr.fold_in(key_steps, epoch), num_batches)
            model, opt_state, loss_sum = run_epoch(
                make_step, state.model, state.opt_state, data, order, batch_size, num_batches,
                step_keys, epoch, progress, config,
            )  # fmt: skip
            val_loss = evaluate_all(model, val_data)
            if not math.isfinite(val_loss):
                raise NonFiniteLossError(val_loss, epoch + 1, None, num_batches)
            state, record = _end_epoch(
                state, model, opt_state, loss_sum / num_batches, val_loss, plateau_step, config
            )
            history.append(record._replace(seconds=time.perf_counter() - start))
            progress.set_postfix(loss=f"{record.train_loss:.4g}", val=f"{val_loss:.4g}")
            logger.info("epoch %d: train %.6g, val %.6g, lr %.3g", *record[:4])
            if checkpoint_dir is not None:
                ckpt.save_checkpoint(checkpoint_dir, state, [r._asdict() for r in history])
            if callback is not None:
                callback(history[-1], model)
    finally:
        progress.close()

    best_val = state.best_val_loss
    final = state.best_model if config.keep_best and math.isfinite(best_val) else state.model
    if checkpoint_dir is not None and hyperparams is not None:
        ckpt.save_model(checkpoint_dir, final, hyperparams)
    best_epoch = min(history, key=lambda r: r.val_loss).epoch if history else 0
    return FitResult(final, state.model, history, best_epoch, best_val, stopped())


def _end_epoch(state, model, opt_state, train_loss, val_loss, plateau_step, config):
    """The state after an epoch: the plateau schedule fed (validation or training loss), the
    best model tracked; and the epoch's record (its ``seconds`` filled in by the caller)."""
    metric = val_loss if config.plateau_metric == "val" else train_loss
    step_state, plateau_state = opt_state
    plateau_state = plateau_step(plateau_state, jnp.asarray(metric, jnp.float32))
    improved = val_loss < state.best_val_loss
    state = ckpt.TrainingState(
        model,
        (step_state, plateau_state),
        state.epoch + 1,
        model if improved else state.best_model,
        val_loss if improved else state.best_val_loss,
        0 if improved else state.epochs_since_improvement + 1,
    )
    lr = float(config.learning_rate * plateau_state.scale)
    return state, EpochRecord(state.epoch, train_loss, val_loss, lr, 0.0)


def _host_seed(key) -> list[int]:
    """Shuffling runs on the host (NumPy), seeded from the key: no device work, no compile."""
    key_bits = jr.key_data(key) if _is_typed_key(key) else key
    return [int(v) for v in np.asarray(key_bits).reshape(-1)]


# ---------------------------------------------------------------------------------- helpers
def _host_epoch_sum(
    make_step, model, opt_state, data, order, batch_size, num_batches, keys, epoch, bar, config
):
    """One epoch of minibatches read from host ``data`` (sorted indices: the same batch
    contents, contiguous reads from memmaps); each loss is checked one step late, so the device
    is never idle. Returns the model, the optimiser state and the sum of the batch losses."""
    loss_sum, pending = 0.0, None
    for b in range(num_batches + 1):
        if b < num_batches:
            index = np.sort(order[b * batch_size : (b + 1) * batch_size])
            batch = jax.tree.map(lambda a, i=index: np.asarray(a[i]), data)
            model, opt_state, loss = make_step(model, opt_state, batch, keys[b])
        if pending is not None:
            loss_sum += _finite_or_raise(*pending, epoch, num_batches)
            bar.update(1)
            if config.show_progress:
                bar.set_postfix(loss=f"{loss_sum / b:.4g}", refresh=False)
        pending = (loss, b)
    return model, opt_state, loss_sum


def _device_epoch_sum(
    make_step, model, opt_state, data, order, batch_size, num_batches, keys, epoch, bar, config
):
    """``_device_epoch`` over the batches of ``order`` (the full ones only with
    ``drop_last``); returns the model, the optimiser state and the sum of the batch losses."""
    used = order[: num_batches * batch_size] if config.drop_last else order
    model, opt_state, losses = _device_epoch(
        make_step, model, opt_state, data, used, batch_size, keys
    )
    loss_sum = sum(_finite_or_raise(loss, b, epoch, num_batches) for b, loss in enumerate(losses))
    bar.update(num_batches)
    return model, opt_state, loss_sum


def _device_epoch(make_step, model, opt_state, data, order, batch_size, step_keys):
    """One epoch on device-resident ``data``: the full batches of ``order`` (each sorted, as in
    the host loop) in one ``lax.scan``, then the smaller last batch, if any, as one step.
    Returns the model, the optimiser state and the host array of per-batch losses."""
    num_full = len(order) // batch_size
    losses = []
    if num_full:
        index = np.sort(order[: num_full * batch_size].reshape(num_full, batch_size), axis=1)
        model, opt_state, scanned = _scan_steps(make_step)(
            model, opt_state, data, jnp.asarray(index), step_keys[:num_full]
        )
        losses.extend(np.asarray(scanned).tolist())
    if num_full * batch_size < len(order):
        index = jnp.asarray(np.sort(order[num_full * batch_size :]))
        batch = jax.tree.map(lambda a: a[index], data)
        model, opt_state, loss = make_step(model, opt_state, batch, step_keys[num_full])
        losses.append(float(loss))
    return model, opt_state, losses


@functools.lru_cache(maxsize=32)
def _scan_steps(make_step):
    """Jitted ``(model, opt_state, data, batch_indices (B, b), keys (B,)) -> (model,
    opt_state, losses (B,))``: ``make_step`` over the batches in a ``lax.scan``."""

    @eqx.filter_jit
    def run(model, opt_state, data, batch_indices, keys):
        arrays, static = eqx.partition((model, opt_state), eqx.is_array)

        def body(carry, inputs):
            index, key = inputs
            batch = jax.tree.map(lambda a: a[index], data)
            model, opt_state, loss = make_step(*eqx.combine(carry, static), batch, key)
            return eqx.filter((model, opt_state), eqx.is_array), loss

        arrays, losses = jax.lax.scan(body, arrays, (batch_indices, keys))
        model, opt_state = eqx.combine(arrays, static)
        return model, opt_state, losses

    return run


def _num_samples(data, name) -> int:
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError(f"{name} has no arrays.")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"every array of {name} must share its leading (sample) axis, got leading sizes "
            f"{sorted(str(s) for s in sizes)}."
        )
    (size,) = sizes
    if size == 0:
        raise ValueError(f"{name} is empty.")
    return size


def _is_typed_key(key) -> bool:
    return jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)


def _finite_or_raise(loss, batch_index, epoch, num_batches) -> float:
    value = float(loss)
    if not math.isfinite(value):
        raise NonFiniteLossError(value, epoch + 1, batch_index + 1, num_batches)
    return value


def _evaluate(evaluate, model, data, num_samples, batch_size) -> float:
    total = 0.0
    for start in range(0, num_samples, batch_size):
        stop = min(start + batch_size, num_samples)
        batch = jax.tree.map(lambda a, s=start, e=stop: np.asarray(a[s:e]), data)
        total += float(evaluate(model, batch)) * (stop - start)
    return total / num_samples


def _evaluate_micro_batches(weighted, model, data, micro_batch) -> float:
    """Mean loss over ``data`` in micro-batches over the local devices (``_micro_batch_sums``)."""
    model = _to_device(model, _devices_for(model)[0])
    parts, size = _micro_batch_sums(weighted, model, data, None, micro_batch)
    return sum(float(np.asarray(part, np.float64).sum()) for part in parts) / size


def _start_or_resume(directory, state, config, hyperparams):
    directory = pathlib.Path(directory)
    stored = {"model": dict(hyperparams or {}), "training": dataclasses.asdict(config)}
    meta_path = directory / ckpt.HYPERPARAMS_FILE
    if not ckpt.checkpoint_exists(directory):
        ckpt.write_json(meta_path, stored)
        return state, []
    if meta_path.is_file():
        previous = ckpt.read_json(meta_path)
        if ckpt.as_json(stored["model"]) != previous.get("model", {}):
            raise ValueError(
                f"the checkpoint in {directory} was written for model hyperparameters "
                f"{previous.get('model')}, not {stored['model']}; use a new checkpoint_dir "
                "or delete the old one."
            )
        if previous.get("training") != ckpt.as_json(stored["training"]):
            logger.warning("resuming %s with a changed training configuration", directory)
            ckpt.write_json(meta_path, stored)
    state = ckpt.load_checkpoint(directory, state)
    history = [EpochRecord(**r) for r in ckpt.load_history(directory, state.epoch)]
    logger.info("resuming from %s after epoch %d", directory, state.epoch)
    return state, history
