"""The generic run report: ``report.md`` and matplotlib PNGs (Agg backend) in the run directory.

Written from ``metrics.json`` and the evaluation stages alone, for every experiment:

- a table of the score per scale and variant group (mean over seeds +- standard error when
  there are several seeds), with the reference implementation's number where comparable;
- ``score_vs_scale.png`` when there are several scales, ``score_vs_group.png`` when the groups
  of one scale are numbers (a lambda sweep);
- ``score_over_time_<scale>.png`` when the score is resolved in time (MMD);
- ``trajectories_<scale>.png``: mean +- std of every latent, truth and up to two groups.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _save(fig, path: Path, plt) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=115)
    plt.close(fig)


def plot_score_vs_scale(path: Path, experiment, metrics: dict) -> None:
    """Score vs the scale label (e.g. n_s) on log axes, one line per group (+ reference)."""
    plt = _pyplot()
    scales = experiment.scales()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, group in enumerate(metrics["summary"][scales[0].name]):
        x = [s.label for s in scales]
        y = [metrics["summary"][s.name][group]["mean"] for s in scales]
        ax.plot(x, y, "o-", color=f"C{i}", label=group)
        ref = [(s.label, experiment.reference(s, group)) for s in scales]
        ref = [(a, b) for a, b in ref if b is not None]
        if ref:
            ax.plot(
                *zip(*ref, strict=True), "x--", color=f"C{i}", alpha=0.5, label=f"{group} (ref.)"
            )
    ax.set(xscale="log", yscale="log", xlabel=experiment.scale_axis, ylabel=experiment.metric)
    ax.set_title(f"{experiment.name}: {experiment.metric} vs scale", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path, plt)


def plot_score_vs_group(path: Path, experiment, metrics: dict, scale) -> None:
    """Score vs a numeric group (e.g. lambda) with standard errors over seeds (+ reference)."""
    plt = _pyplot()
    summary = metrics["summary"][scale.name]
    groups = sorted(summary, key=float)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    se = [summary[g]["se_over_seeds"] or 0.0 for g in groups]
    x = [float(g) for g in groups]
    ax.errorbar(
        x, [summary[g]["mean"] for g in groups], yerr=se, fmt="o-", capsize=3, label="jmacro"
    )
    ref = [(float(g), experiment.reference(scale, g)) for g in groups]
    ref = [(a, b) for a, b in ref if b is not None]
    if ref:
        ax.plot(*zip(*ref, strict=True), "x--", color="C1", label="reference impl.")
    ax.axvline(scale.num_patches, color="0.6", lw=0.8, ls=":", label="lambda = K")
    ax.set(xlabel="covariance scale lambda", ylabel=experiment.metric)
    ax.set_title(f"{experiment.name}, {scale.name}", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path, plt)


def plot_score_over_time(path: Path, experiment, evaluation, scale) -> None:
    """Time-resolved score (mean over conditions and seeds) per group."""
    plt = _pyplot()
    times = np.asarray(evaluation["times"])
    fig, ax = plt.subplots(figsize=(5, 3.6))
    groups: dict[str, list] = {}
    for v in experiment.sde_variants(scale):
        groups.setdefault(v.group, []).append(np.asarray(evaluation[f"score_{v.name}"]).mean(0))
    for i, (group, curves) in enumerate(groups.items()):
        ax.plot(times, np.mean(curves, axis=0), color=f"C{i}", lw=1, label=group)
    ax.set(xlabel=experiment.time_unit, ylabel=f"{experiment.metric} (mean over conditions)")
    ax.legend(fontsize=7)
    _save(fig, path, plt)


def plot_trajectories(path: Path, experiment, evaluation, variants) -> None:
    """Mean +- std of every latent vs time: ground truth and each of ``variants``."""
    plt = _pyplot()
    times = np.asarray(evaluation["times"])
    truth = np.asarray(evaluation["truth"])  # (C, R, T+1, d)
    d = truth.shape[-1]
    names = list(experiment.latent_names) + [f"latent {k}" for k in range(d)]
    styles = [("truth", truth, "k", "-")] + [
        (v.group, np.asarray(evaluation[f"pred_{v.name}"]), f"C{i}", "--")
        for i, v in enumerate(variants)
    ]
    fig, axes = plt.subplots(1, d, figsize=(3.6 * d, 3.2), squeeze=False)
    for k, ax in enumerate(axes[0]):
        for c in range(truth.shape[0]):
            for label, data, colour, style in styles:
                mean, std = data[c, :, :, k].mean(0), data[c, :, :, k].std(0)
                ax.plot(times, mean, style, color=colour, lw=1, label=label if c == 0 else None)
                ax.fill_between(times, mean - std, mean + std, color=colour, alpha=0.08)
        ax.set_title(names[k], fontsize=9)
        ax.set_xlabel(experiment.time_unit)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{experiment.name}: {', '.join(experiment.conditions())}", fontsize=8)
    _save(fig, path, plt)


def _table(experiment, metrics: dict) -> list[str]:
    scales = experiment.scales()
    groups = list(metrics["summary"][scales[0].name])
    refs = any(experiment.reference(s, g) is not None for s in scales for g in groups)
    head = "| scale | K | " + " | ".join(groups) + " |"
    head += "".join(f" {g} (ref.) |" for g in groups) if refs else ""
    lines = [head, "|" + "---|" * (2 + len(groups) * (2 if refs else 1))]
    for s in scales:
        cells = []
        for g in groups:
            entry = metrics["summary"][s.name][g]
            se = entry["se_over_seeds"]
            cells.append(f"{entry['mean']:.3g}" + (f" +- {se:.2g}" if se is not None else ""))
        if refs:
            cells += [
                "-" if (r := experiment.reference(s, g)) is None else f"{r:.3g}" for g in groups
            ]
        lines.append(f"| {s.name} | {s.num_patches} | " + " | ".join(cells) + " |")
    return lines


def write_report(run_dir: Path, experiment, metrics: dict, evaluations: dict) -> None:
    """Write ``report.md`` and the PNGs of a finished run (module docstring)."""
    scales = experiment.scales()
    lines = [
        f"# jmacro run: {experiment.name}, preset `{experiment.preset}`",
        "",
        f"{experiment.describe()} Wall time {metrics['wall_time_s']:.0f} s.",
        "",
        f"Score: {experiment.metric} (lower is better), mean over the test conditions "
        f"({', '.join(experiment.conditions())}); +- is the standard error over seeds.",
        "",
        *_table(experiment, metrics),
        "",
    ]
    if len(scales) > 1:
        plot_score_vs_scale(run_dir / "score_vs_scale.png", experiment, metrics)
        lines += ["![score vs scale](score_vs_scale.png)", ""]
    for scale in scales:
        evaluation = evaluations[scale.name].dataset
        summary = metrics["summary"][scale.name]
        lines += [f"## {scale.name}", ""]
        if len(summary) > 2 and all(_as_number(g) is not None for g in summary):
            plot_score_vs_group(
                run_dir / f"score_vs_group_{scale.name}.png", experiment, metrics, scale
            )
            lines += [f"![score vs group](score_vs_group_{scale.name}.png)", ""]
        variants = experiment.sde_variants(scale)
        if np.asarray(evaluation[f"score_{variants[0].name}"]).ndim > 1:
            name = f"score_over_time_{scale.name}.png"
            plot_score_over_time(run_dir / name, experiment, evaluation, scale)
            lines += [f"![score over time]({name})", ""]
        best = min(summary, key=lambda g: summary[g]["mean"])
        groups = list(dict.fromkeys(v.group for v in variants))
        shown = list(dict.fromkeys([groups[0], best, *groups[1:2]]))[:2]
        picked = [next(v for v in variants if v.group == g) for g in shown]
        name = f"trajectories_{scale.name}.png"
        plot_trajectories(run_dir / name, experiment, evaluation, picked)
        lines += [f"Best group: {best}.", "", f"![latent trajectories]({name})", ""]
    (run_dir / "report.md").write_text("\n".join(lines))
