"""Training throughput, jmacro against the original configuration in the same run: one JSON
line per case (``samples_per_s``, ``original_samples_per_s``, ``ratio``).

Cases:
- ``autoencoder_c32``: the paper-width closure autoencoder (64x64 lattice, 16x16 patches,
  K = 16, closure_dim 2, base_channels 32), reconstruction (BCE) loss, batch 512 (reference),
  AMSGrad. jmacro: the pipeline's path, the layers as now and micro-batches of 8 over the
  local devices (``TrainConfig(micro_batch=micro_batch_on_cpu(8))``). Original: the layers
  as first written (``closure.plain_layers``: norm before pooling, dilated transposed
  convolutions) and one jitted step on the whole batch, as before issue 12. Also the whole
  batch with the layers as now (``whole_batch_samples_per_s``: the layer rewrite alone).
- ``autoencoder_c8``: the same at the CPU-sized width (base_channels 8).
- ``autoencoder_c32_fit``: whole ``fit`` epochs of the paper-width autoencoder (3,072
  training and 512 validation snapshots, batch 512, validation included), with the
  pipeline's settings against the original configuration, after a one-epoch fit that compiles.
- ``sde_fit``: whole ``fit`` epochs of the latent SDE (d = 4, full diffusion, 16,384 pairs,
  batch 256, validation included): ``device_epochs`` (each epoch one jitted ``lax.scan``)
  against the host loop.

Every step is the same optimiser step on host NumPy batches as ``fit`` takes; the cases'
configurations alternate step by step (the machine is shared: a ratio from one run, not
absolute rates, is what to compare), each after a compiling step and a warm step; samples/s
from the median step time. ``first_loss`` of each configuration shows that they compute the
same loss.

Usage: python benchmarks/bench_training.py [--steps N] [--only-autoencoder]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import time

import jax
import jax.random as jr
import numpy as np

from jmacro.models import make_latent_sde, make_spin_autoencoder
from jmacro.models.closure import plain_layers
from jmacro.training import (
    IncrementPairs,
    TrainConfig,
    build_train_step,
    fit,
    increment_loss_fn,
    init_opt_state,
    micro_batch_on_cpu,
    reconstruction_loss,
)

MICRO_BATCH = 8  # the pipeline's (jmacro.pipelines.runner, autoencoder stage)


def _environment() -> dict:
    return {
        "device": jax.devices()[0].device_kind,
        "local_devices": jax.local_device_count(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
    }


class _Path:
    """One training configuration: its step function and its own model/optimiser state."""

    def __init__(self, model, config, plain):
        # A fresh loss per path: build_train_step caches on it, and plain_layers is read when
        # the step is traced (its first call).
        self.step = build_train_step(lambda m, b, k: reconstruction_loss(m, b, k), config)
        self.state = (model, init_opt_state(model, config))
        self.plain = plain
        self.seconds: list[float] = []

    def __call__(self, batch, key):
        start = time.perf_counter()
        if self.plain:
            with plain_layers():
                out = self.step(*self.state, batch, key)
        else:
            out = self.step(*self.state, batch, key)
        jax.block_until_ready(out)
        self.state = out[:2]
        return time.perf_counter() - start, float(out[2])


def autoencoder_case(base_channels: int, num_steps: int, batches) -> dict:
    """Original vs whole-batch (layers as now) vs jmacro (+ micro-batches), alternating."""
    model = make_spin_autoencoder(jr.key(1), 64, 16, closure_dim=2, base_channels=base_channels)
    config = TrainConfig(learning_rate=2e-4, batch_size=batches[0].shape[0])
    micro = dataclasses.replace(config, micro_batch=micro_batch_on_cpu(MICRO_BATCH))
    paths = {
        "original": _Path(model, config, plain=True),
        "whole_batch": _Path(model, config, plain=False),
        "jmacro": _Path(model, micro, plain=False),
    }
    key = jr.key(0)
    compile_s, first_loss = {}, {}
    for name, path in paths.items():
        compile_s[name], first_loss[name] = path(batches[0], key)
        path(batches[1 % len(batches)], key)  # warm: the updated (committed) state
    for i in range(num_steps):
        for path in paths.values():
            path.seconds.append(path(batches[i % len(batches)], key)[0])
    size = batches[0].shape[0]
    rate = {name: size / statistics.median(p.seconds) for name, p in paths.items()}
    original = paths["original"].seconds
    return {
        "case": f"autoencoder_c{base_channels}",
        "samples_per_s": round(rate["jmacro"], 1),
        "original_samples_per_s": round(rate["original"], 1),
        "ratio": round(rate["jmacro"] / rate["original"], 2),
        "whole_batch_samples_per_s": round(rate["whole_batch"], 1),
        "step_ratios": [
            round(o / j, 2) for o, j in zip(original, paths["jmacro"].seconds, strict=True)
        ],
        "batch_size": size,
        "micro_batch": micro.micro_batch,
        "steps_each": num_steps,
        "compile_s": {k: round(v, 1) for k, v in compile_s.items()},
        "first_loss": first_loss,
        **_environment(),
    }


def autoencoder_fit_case(rng, num_epochs: int) -> dict:
    """Whole fit epochs of the paper-width autoencoder: the pipeline's settings (jmacro) vs
    the layers as first written and whole batches (original); each after a one-epoch fit."""
    train, val = (
        np.where(rng.random((n, 64, 64)) < 0.5, 1, -1).astype(np.int8) for n in (3072, 512)
    )
    model = make_spin_autoencoder(jr.key(1), 64, 16, closure_dim=2, base_channels=32)
    config = TrainConfig(learning_rate=2e-4, batch_size=512, show_progress=False)
    configs = {
        "original": config,
        "jmacro": dataclasses.replace(config, micro_batch=micro_batch_on_cpu(MICRO_BATCH)),
    }
    # A fresh loss per configuration: fit caches its compiled step on the loss function, and
    # plain_layers is read when the step is traced.
    losses = {name: (lambda m, b, k: reconstruction_loss(m, b, k)) for name in configs}

    def timed_fit(name, epochs):
        start = time.perf_counter()
        cfg = dataclasses.replace(configs[name], num_epochs=epochs)
        context = plain_layers() if name == "original" else contextlib.nullcontext()
        with context:
            result = fit(model, losses[name], train, val, jr.key(3), cfg)
        return time.perf_counter() - start, [round(r.val_loss, 6) for r in result.history]

    warm = {name: timed_fit(name, 1)[0] for name in configs}
    seconds, val_losses = {}, {}
    for name in configs:
        seconds[name], val_losses[name] = timed_fit(name, num_epochs)
    rate = {name: num_epochs * len(train) / seconds[name] for name in configs}
    return {
        "case": "autoencoder_c32_fit",
        "samples_per_s": round(rate["jmacro"], 1),
        "original_samples_per_s": round(rate["original"], 1),
        "ratio": round(rate["jmacro"] / rate["original"], 2),
        "epochs": num_epochs,
        "train_samples": len(train),
        "val_samples": len(val),
        "warm_up_fit_s": {k: round(v, 1) for k, v in warm.items()},
        "val_losses": val_losses,
        **_environment(),
    }


def sde_fit_case(rng) -> dict:
    """Whole fit epochs of the latent SDE, device_epochs (jmacro) vs the host loop."""
    many = IncrementPairs(
        *(rng.normal(size=(16384, 4)).astype(np.float32) for _ in range(2)),
        rng.uniform(0.5, 1.5, 16384).astype(np.float32),
    )
    sde = make_latent_sde(jr.key(2), 4, "full")
    loss = increment_loss_fn(covariance_scale=16.0)
    seconds = {}
    for device_epochs in (False, True):
        config = TrainConfig(batch_size=256, show_progress=False, device_epochs=device_epochs)
        fit(sde, loss, many, many, jr.key(3), dataclasses.replace(config, num_epochs=1))
        start = time.perf_counter()
        fit(sde, loss, many, many, jr.key(3), dataclasses.replace(config, num_epochs=3))
        seconds[device_epochs] = time.perf_counter() - start
    rate = {k: 3 * 16384 / v for k, v in seconds.items()}
    return {
        "case": "sde_fit_batch256",
        "samples_per_s": round(rate[True], 1),
        "original_samples_per_s": round(rate[False], 1),
        "ratio": round(rate[True] / rate[False], 2),
        "jmacro": "device_epochs",
        "original": "host loop",
        **_environment(),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6, help="timed steps per configuration")
    parser.add_argument("--only-autoencoder", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    spins = [np.where(rng.random((512, 64, 64)) < 0.5, 1, -1).astype(np.int8) for _ in range(2)]
    print(json.dumps(autoencoder_case(32, args.steps, spins)), flush=True)
    print(json.dumps(autoencoder_case(8, 2 * args.steps, spins)), flush=True)
    print(json.dumps(autoencoder_fit_case(rng, 2)), flush=True)
    if not args.only_autoencoder:
        print(json.dumps(sde_fit_case(rng)), flush=True)


if __name__ == "__main__":
    main()
