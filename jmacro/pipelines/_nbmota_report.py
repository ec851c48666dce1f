"""The NbMoTa sections of ``report.md`` (``NbMoTa.report_sections``): the learned SDEs' SRO
trajectories against direct KMC of the large crystal per temperature, the late-time SRO and
its spread with error bars over replicate seeds, the equilibrium SRO vs temperature, and the
cost of each part.

Every number is the mean over the replicate seeds (independent data, models and ground truth)
+- its standard error; within a replicate, the ensemble mean and standard deviation are over
the test runs (truth) or the rollouts (one per test run, from its encoded initial state).
"Late" is the last quarter of each temperature's grid (its output times averaged).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jmacro.io.storage import load_dataset
from jmacro.models import SRO_COORDINATES
from jmacro.observables import short_range_order
from jmacro.pipelines.report import _pyplot, _save
from jmacro.pipelines.scoring import mean_se

REFERENCE_SECONDS_PER_EVENT = 380e-6
"""The reference's numpy KMC driver on this kind of CPU (NNK barriers; issue 14)."""


def _stage(metrics, seed, name):
    """A stage dataset of replicate ``seed`` (``metrics["stages"]``), or None."""
    path = metrics.get("stages", {}).get(f"seed{seed}/{name}")
    return load_dataset(path) if path and Path(path).is_dir() else None


def _pm(entry, digits=3) -> str:
    if entry["mean"] is None:
        return "-"
    text = f"{entry['mean']:.{digits}f}"
    return text + (f" +- {entry['se']:.{digits}f}" if entry["se"] is not None else "")


def _late(times: np.ndarray) -> slice:
    """The last quarter of a grid of ``times.shape[-1]`` points (at least one point)."""
    num = times.shape[-1]
    return slice(num - max(1, num // 4), num)


def _ensemble_stats(evaluations, key):
    """Per seed, ensemble mean and std over runs, ``(S, C, T+1, d)`` each, over the runs that
    did not diverge (non-finite or beyond 10 truth ranges, as ``metrics.diverged_fraction``),
    and the diverged fraction of each seed ``(S,)``."""
    means, stds, diverged = [], [], []
    for evaluation in evaluations:
        z = np.asarray(evaluation[key], np.float64)  # (C, R, T+1, d)
        truth = np.asarray(evaluation["truth"], np.float64)
        low, high = truth.min(axis=(0, 1, 2)), truth.max(axis=(0, 1, 2))
        half = 10.0 * np.maximum(high - low, 1e-12)
        with np.errstate(invalid="ignore"):
            far = ~(np.abs(z - (low + high) / 2) <= half).all(axis=(2, 3))  # (C, R)
        kept = np.where(far[..., None, None], np.nan, z)
        with warnings.catch_warnings():  # a condition whose every run diverged: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            means.append(np.nanmean(kept, axis=1))
            stds.append(np.nanstd(kept, axis=1))
        diverged.append(float(far.mean()))
    return np.stack(means), np.stack(stds), np.asarray(diverged)


def nbmota_sections(exp, run_dir: Path, metrics: dict, replicates: dict) -> list[str]:
    """Markdown lines (and PNGs in ``run_dir``) of the NbMoTa-specific report."""
    scale = exp.scales()[0]
    seeds = metrics["seeds"]
    evaluations = [replicates[s][scale.name] for s in seeds]
    times = np.asarray(evaluations[0]["times"], np.float64)  # (C, T+1), s
    groups = [v for v in exp.sde_variants(scale)]
    late = _late(times)
    stats = {"KMC": _ensemble_stats(evaluations, "truth")}
    for v in groups:
        stats[v.group] = _ensemble_stats(evaluations, f"pred_{v.name}")
    lines = [
        "## NbMoTa: learned SDEs vs direct KMC of the large crystal",
        "",
        f"Direct residence-time KMC of the {int(scale.label):,}-site crystal ({exp.num_tiles} "
        f"vacancies) at each test temperature, {exp.truth.num_test_runs} runs per replicate, "
        "against the SDEs' rollouts from each run's encoded initial state (random alloy, SRO "
        "~ 0). Time in seconds; each temperature's grid spans about "
        f"{exp.horizon_events:,} events per vacancy. Lines: mean over seeds of the ensemble "
        "mean; bands: +- the ensemble standard deviation (spread over runs).",
        "",
    ]
    name = "nbmota_sro_vs_time.png"
    _plot_sro_vs_time(run_dir / name, exp, times, stats)
    lines += [f"![SRO vs time]({name})", ""]
    lines += _late_table(exp, stats, late, len(seeds))
    lines += _whole_vs_intra(exp, metrics, seeds, late)
    name = "nbmota_equilibrium_sro.png"
    lines += _equilibrium(exp, metrics, seeds, stats, late, run_dir / name)
    lines += _costs(exp, metrics, seeds, scale)
    return lines


def _plot_sro_vs_time(path, exp, times, stats) -> None:
    plt = _pyplot()
    conditions = exp.conditions()
    d = len(exp.latent_names)
    fig, axes = plt.subplots(
        len(conditions), d, figsize=(3.2 * d, 2.6 * len(conditions)), squeeze=False
    )
    styles = {"KMC": ("k", "-"), "ours": ("C0", "--"), "baseline": ("C3", ":")}
    for c, row in enumerate(axes):
        for k, ax in enumerate(row):
            band = stats["KMC"][0][:, c, :, k].mean(0), stats["KMC"][1][:, c, :, k].mean(0)
            low, high = float(np.min(band[0] - band[1])), float(np.max(band[0] + band[1]))
            width = max(high - low, 1e-3)
            for label, (mean, std, _) in stats.items():
                colour, style = styles.get(label, ("C2", "-."))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    m, s = np.nanmean(mean[:, c, :, k], 0), np.nanmean(std[:, c, :, k], 0)
                ax.plot(times[c], m, style, color=colour, lw=1.2, label=label)
                ax.fill_between(times[c], m - s, m + s, color=colour, alpha=0.12)
            ax.set_ylim(low - width, high + width)  # the truth's band sets the axes
            ax.set_title(f"{conditions[c]}: {exp.latent_names[k]}", fontsize=8)
            ax.set_xlabel("time (s)", fontsize=8)
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{exp.name}: SRO vs time, direct KMC vs learned SDEs", fontsize=9)
    _save(fig, path, plt)


def _late_table(exp, stats, late, num_seeds) -> list[str]:
    labels = list(stats)
    head = " | ".join(f"{g} mean" for g in labels) + " | " + " | ".join(f"{g} std" for g in labels)
    diverged = ", ".join(f"{g} {100 * stats[g][2].mean():.0f} %" for g in labels[1:])
    lines = [
        f"Late-time SRO (last quarter of the horizon): ensemble mean and spread (std over "
        f"runs), mean +- SE over {num_seeds} seeds; rollouts that diverged (beyond 10 truth "
        f"ranges) are left out ({diverged}).",
        "",
        f"| T | SRO | {head} |",
        "|" + "---|" * (2 + 2 * len(labels)),
    ]
    for c, condition in enumerate(exp.conditions()):
        for k, latent in enumerate(exp.latent_names):
            means = [_pm(mean_se(stats[g][0][:, c, late, k].mean(1))) for g in labels]
            stds = [_pm(mean_se(stats[g][1][:, c, late, k].mean(1))) for g in labels]
            lines.append(f"| {condition} | {latent} | " + " | ".join(means + stds) + " |")
    return [*lines, ""]


def _whole_vs_intra(exp, metrics, seeds, late) -> list[str]:
    """The direct KMC's whole-crystal SRO (every bond) against its intra-tile SRO (the
    latent): equal within noise for a homogeneous crystal."""
    index = list(SRO_COORDINATES[exp.sro_coordinates])
    gaps = []
    for seed in seeds:
        truth = _stage(metrics, seed, "truth")
        evaluation = _stage(metrics, seed, f"{exp.scales()[0].name}_evaluation")
        if truth is None or evaluation is None:
            return []
        test = np.asarray(truth["test"])[:, :, late]  # (C, R, t, L, L, L, 2)
        whole = _sro(test)[..., index].mean(axis=(1, 2))  # (C, d)
        intra = np.asarray(evaluation["truth"])[:, :, late].mean(axis=(1, 2))
        gaps.append(whole - intra)
    gaps = np.asarray(gaps)  # (S, C, d)
    cells = ", ".join(
        f"{latent} {_pm(mean_se(gaps[:, :, k].mean(1)), 4)}"
        for k, latent in enumerate(exp.latent_names)
    )
    return [
        "The latent is the intra-tile SRO (bonds across tile seams left out, see the module "
        "doc of `jmacro.pipelines.nbmota`); for the direct KMC it agrees with the whole-crystal "
        f"SRO: late-time whole minus intra-tile, mean over temperatures: {cells}.",
        "",
    ]


def _equilibrium(exp, metrics, seeds, stats, late, path) -> list[str]:
    index = list(SRO_COORDINATES[exp.sro_coordinates])
    small = [_stage(metrics, s, f"{exp.scales()[0].name}_small") for s in seeds]
    if any(x is None for x in small):
        return []
    sro = np.stack([np.asarray(x["equilibrium_sro"], np.float64)[..., index] for x in small])
    frames = sro.shape[3]  # (S, T_eq, runs, F+1, d)
    half, quarter = slice(frames // 2, frames), max(1, frames // 4)
    per_run = sro[:, :, :, half].mean(3)  # (S, T_eq, runs, d)
    flat = per_run.transpose(1, 0, 2, 3).reshape(per_run.shape[1], -1, per_run.shape[-1])
    small_mean, small_se = flat.mean(1), flat.std(1, ddof=1) / np.sqrt(flat.shape[1])
    drift = sro[:, :, :, -quarter:].mean(3) - sro[:, :, :, -2 * quarter : -quarter].mean(3)
    drift = drift.transpose(1, 0, 2, 3).reshape(flat.shape)
    drift_se = drift.std(1, ddof=1) / np.sqrt(drift.shape[1])
    settled = np.all(np.abs(drift.mean(1)) <= 3 * drift_se + 1e-12, axis=1)
    plt = _pyplot()
    d = len(index)
    fig, axes = plt.subplots(1, d, figsize=(3.4 * d, 3.0), squeeze=False)
    temps_eq = np.asarray(exp.equilibrium_temperatures)
    temps_test = np.asarray(exp.test_temperatures)
    styles = {"KMC": ("k", "s"), "ours": ("C0", "o"), "baseline": ("C3", "^")}
    for k, ax in enumerate(axes[0]):
        ax.errorbar(
            temps_eq, small_mean[:, k], yerr=small_se[:, k], fmt="x-", color="0.5", capsize=2,
            label=f"small KMC ({2 * exp.small_cells**3:,} sites), last half",
        )  # fmt: skip
        for label, (mean, _, _) in stats.items():
            late_mean = mean[:, :, late, k].mean(2)  # (S, C)
            entries = [mean_se(late_mean[:, c]) for c in range(len(temps_test))]
            ax.errorbar(
                temps_test,
                [np.nan if e["mean"] is None else e["mean"] for e in entries],
                yerr=[e["se"] or 0 for e in entries],
                fmt=styles.get(label, ("C2", "d"))[1], color=styles.get(label, ("C2", "d"))[0],
                capsize=2, label=f"{label} (large), late",
            )  # fmt: skip
        ax.set(xlabel="temperature (K)", ylabel=exp.latent_names[k])
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"{exp.name}: SRO vs temperature", fontsize=9)
    _save(fig, path, plt)
    lines = [
        "### Equilibrium SRO vs temperature",
        "",
        f"Long small-cell runs ({exp.equilibrium_runs} per temperature and seed, "
        f"{exp.equilibrium_events:,} events each, every bond counted): mean over the last half "
        "+- SE over runs and seeds. `settled`: the last two quarters agree within 3 SE (else "
        "the run was still ordering, and the number is a bound).",
        "",
        "| T (K) | " + " | ".join(exp.latent_names) + " | settled |",
        "|" + "---|" * (d + 2),
    ]
    for i, t in enumerate(temps_eq):
        cells = [f"{small_mean[i, k]:.3f} +- {small_se[i, k]:.3f}" for k in range(d)]
        lines.append(f"| {t:g} | " + " | ".join(cells) + f" | {'yes' if settled[i] else 'no'} |")
    return [*lines, "", f"![equilibrium SRO]({path.name})", ""]


def _costs(exp, metrics, seeds, scale) -> list[str]:
    """Wall time of the KMC parts and of the SDE training, summed over seeds."""
    total = {"small": [0.0, 0.0], "truth": [0.0, 0.0]}
    for seed in seeds:
        for part, name in (("small", f"{scale.name}_small"), ("truth", "truth")):
            data = _stage(metrics, seed, name)
            if data is not None:
                total[part][0] += float(np.asarray(data["kmc_events"]))
                total[part][1] += float(np.asarray(data["kmc_seconds"]))
    pairs_s = sum(
        float(np.sum(np.asarray(d["kmc_seconds"])))
        for d in (_stage(metrics, s, f"{scale.name}_pairs") for s in seeds)
        if d is not None
    )
    train_s = 0.0
    for seed in seeds:
        for v in exp.sde_variants(scale):
            stage = metrics.get("stages", {}).get(f"seed{seed}/{scale.name}_sde_{v.name}")
            history = Path(stage) / "history.json" if stage else None
            if history is not None and history.is_file():
                train_s += sum(r["seconds"] for r in json.loads(history.read_text()))
    lines = [
        "### Cost",
        "",
        f"Wall time of the whole run {metrics['wall_time_s']:.0f} s ({len(seeds)} replicates, "
        "compilation included). Summed over replicates:",
        "",
        "| part | seconds | KMC events | events/s | vs the reference's numpy KMC (380 us/event) |",
        "|---|---|---|---|---|",
    ]
    for part, label in (("small", "small-cell KMC (training data + equilibrium runs)"),
                        ("truth", "direct KMC of the large crystal (ground truth)")):  # fmt: skip
        events, seconds = total[part]
        rate = events / seconds if seconds else float("nan")
        ratio = rate * REFERENCE_SECONDS_PER_EVENT
        lines.append(f"| {label} | {seconds:.0f} | {events:.3g} | {rate:.3g} | {ratio:.0f}x |")
    lines += [
        f"| partial evolution of windows (pairs) | {pairs_s:.0f} | | | |",
        f"| SDE training (ours + baseline) | {train_s:.0f} | | | |",
        "",
        "Direct-KMC events are the expected counts (horizon and validation events per "
        "vacancy x vacancies; the runs stop at fixed times). The reference's 380 us/event is "
        "its NNK driver; `benchmarks/bench_alloy.py` measures both barrier models against a "
        "reference-style driver in one process.",
        "",
    ]
    return lines


@jax.jit
def _sro_batch(occupancy):
    return jax.vmap(short_range_order)(occupancy)


def _sro(occupancy) -> np.ndarray:
    """``short_range_order`` (every bond) of ``(..., L, L, L, 2)``: ``(..., 6)`` float32."""
    occupancy = np.asarray(occupancy)
    flat = occupancy.reshape(-1, *occupancy.shape[-4:])
    sro = np.concatenate([
        np.asarray(_sro_batch(jnp.asarray(flat[i : i + 4096])))
        for i in range(0, len(flat), 4096)
    ])  # fmt: skip
    return sro.reshape(*occupancy.shape[:-4], 6).astype(np.float32)
