"""Training throughput of the closure autoencoder and of the latent SDE (one JSON line).

- autoencoder: the Ising-size model (64x64 lattice, 16x16 patches, K = 16, closure_dim 2),
  reconstruction (BCE) loss, batch 512 (reference), for the reference CNN width
  (base_channels 32) and a CPU-sized one (base_channels 8);
- SDE: d = 4, full diffusion (reference architecture), partial-evolution loss with lambda = 16,
  batch 1024 (reference).

Throughput = samples (configurations or pairs) per second through the jitted ``make_step``,
fed host NumPy batches as ``fit`` does, after a warm-up step (compile time reported apart).
Also whole ``fit`` epochs of the SDE (16,384 pairs, batch 256, validation included) with the
host loop and with ``device_epochs=True`` (each epoch one jitted ``lax.scan``), after a warm-up
fit that compiles.

Also the paper-width autoencoder (base_channels 32, batch 512) before and after the layer
rewrite of issue 12 (the norm after the pooling, sub-pixel transposed convolutions), in the
same process: "before" traces the layers as first written (``closure.plain_layers``), the
steps alternate between the two, and the ratio is the ratio of the medians.

Usage: python benchmarks/bench_training.py [--steps N] [--only-autoencoder]
"""

from __future__ import annotations

import argparse
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
    reconstruction_loss,
)


def measure(model, loss_fn, batches, config, num_steps):
    make_step = build_train_step(loss_fn, config)
    opt_state = init_opt_state(model, config)
    key = jr.key(0)
    start = time.perf_counter()
    model, opt_state, loss = make_step(model, opt_state, batches[0], key)
    loss.block_until_ready()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for step in range(num_steps):
        model, opt_state, loss = make_step(model, opt_state, batches[step % len(batches)], key)
    loss.block_until_ready()
    seconds = time.perf_counter() - start
    batch_size = jax.tree.leaves(batches[0])[0].shape[0]
    return {
        "samples_per_s": round(num_steps * batch_size / seconds, 1),
        "ms_per_step": round(1e3 * seconds / num_steps, 2),
        "batch_size": batch_size,
        "compile_s": round(compile_seconds, 2),
    }


def autoencoder_before_after(batches, num_steps):
    """The paper-width autoencoder's training step with the layers as first written (before)
    and as now (after), alternating step by step in one process; samples/s from the median
    step time of each, and their ratio. Also the largest difference of the first step's loss
    between the two (same model, same batch)."""
    model = make_spin_autoencoder(jr.key(1), 64, 16, closure_dim=2, base_channels=32)
    config = TrainConfig(learning_rate=2e-4, batch_size=512)
    opt_state = init_opt_state(model, config)
    key = jr.key(0)
    steps, losses, compile_s = {}, {}, {}
    for name in ("before", "after"):
        # A fresh loss function per path: build_train_step caches on it, and the switch is
        # read when the step is traced (its first call).
        step = build_train_step(lambda m, b, k: reconstruction_loss(m, b, k), config)
        start = time.perf_counter()
        if name == "before":
            with plain_layers():
                loss = step(model, opt_state, batches[0], key)[2]
        else:
            loss = step(model, opt_state, batches[0], key)[2]
        losses[name] = float(loss)
        compile_s[name] = round(time.perf_counter() - start, 2)
        steps[name] = step
    seconds = {name: [] for name in steps}
    states = {name: (model, opt_state) for name in steps}
    for i in range(num_steps):
        for name, step in steps.items():
            start = time.perf_counter()
            m, o, loss = step(*states[name], batches[i % len(batches)], key)
            loss.block_until_ready()
            seconds[name].append(time.perf_counter() - start)
            states[name] = (m, o)
    batch_size = batches[0].shape[0]
    rates = {name: batch_size / statistics.median(s) for name, s in seconds.items()}
    return {
        "before_samples_per_s": round(rates["before"], 1),
        "after_samples_per_s": round(rates["after"], 1),
        "ratio": round(rates["after"] / rates["before"], 2),
        "steps_each": num_steps,
        "batch_size": batch_size,
        "step_ratios": [
            round(b / a, 2) for b, a in zip(seconds["before"], seconds["after"], strict=True)
        ],
        "first_loss_before": losses["before"],
        "first_loss_after": losses["after"],
        "compile_s": compile_s,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--only-autoencoder", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    result = {
        "benchmark": "training_throughput",
        "device": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
    }

    spins = [np.where(rng.random((512, 64, 64)) < 0.5, 1, -1).astype(np.int8) for _ in range(2)]
    result["autoencoder_64x64_p16_c32_before_after"] = autoencoder_before_after(
        spins, max(2, args.steps // 4)
    )
    if args.only_autoencoder:
        print(json.dumps(result))
        return
    ae_config = TrainConfig(learning_rate=2e-4, batch_size=512)
    for channels in (32, 8):
        model = make_spin_autoencoder(jr.key(1), 64, 16, closure_dim=2, base_channels=channels)
        steps = max(2, args.steps // (4 if channels == 32 else 1))
        result[f"autoencoder_64x64_p16_c{channels}"] = measure(
            model, reconstruction_loss, spins, ae_config, steps
        )

    pairs = [
        IncrementPairs(
            rng.normal(size=(1024, 4)).astype(np.float32),
            rng.normal(size=(1024, 4)).astype(np.float32),
            rng.uniform(0.5, 1.5, 1024).astype(np.float32),
        )
        for _ in range(4)
    ]
    sde = make_latent_sde(jr.key(2), 4, "full")
    result["sde_d4_full"] = measure(
        sde, increment_loss_fn(covariance_scale=16.0), pairs, TrainConfig(), 10 * args.steps
    )
    many = IncrementPairs(
        *(rng.normal(size=(16384, 4)).astype(np.float32) for _ in range(2)),
        rng.uniform(0.5, 1.5, 16384).astype(np.float32),
    )
    loss = increment_loss_fn(covariance_scale=16.0)
    for device_epochs in (False, True):
        config = TrainConfig(batch_size=256, show_progress=False, device_epochs=device_epochs)
        fit(sde, loss, many, many, jr.key(3), dataclasses.replace(config, num_epochs=1))
        start = time.perf_counter()
        fit(sde, loss, many, many, jr.key(3), dataclasses.replace(config, num_epochs=3))
        seconds = time.perf_counter() - start
        name = "device_epochs" if device_epochs else "host_loop"
        result[f"sde_d4_full_fit_batch256_{name}"] = {
            "pairs_per_s": round(3 * 16384 / seconds, 1),
            "s_per_epoch": round(seconds / 3, 3),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
