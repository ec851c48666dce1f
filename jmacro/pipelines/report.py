"""The generic run report: ``report.md`` and matplotlib PNGs (Agg backend) in the run directory.

Written from ``metrics.json`` and the (first replicate's) evaluation stages alone, for every
experiment:

- jmacro's protocol: the score per scale and variant group (mean over replicate seeds +-
  standard error), the Monte Carlo floor, the diverged share and the std ratio per latent;
- the reference's protocol (when the truth has event-stepped runs) beside the paper's
  numbers and their ratio;
- ``score_vs_scale.png`` / ``reference_score_vs_scale.png`` when there are several scales,
  ``score_vs_group_<scale>.png`` when the groups of one scale are numbers (a lambda sweep);
- ``mmd_over_time_<scale>.png``: the spread of the predictions over time;
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


def _value(x) -> float:
    """A mean for plots and ranking: None (every replicate diverged) as NaN."""
    return float("nan") if x is None else x


def _pm(entry: dict | None, mean="mean", se="se") -> str:
    if entry is None:
        return "-"
    if entry[mean] is None:
        return "diverged"
    text = f"{entry[mean]:.3g}"
    return text + (f" +- {entry[se]:.2g}" if entry.get(se) is not None else "")


def plot_score_vs_scale(path: Path, experiment, metrics: dict, key: str = "score") -> None:
    """Score (``key``: jmacro's or the reference's protocol) vs the scale label on log axes,
    one line per group with standard errors over seeds, the Monte Carlo floor and, for the
    reference protocol, the reference implementation's numbers."""
    plt = _pyplot()
    scales = experiment.scales()
    x = [s.label for s in scales]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, group in enumerate(metrics["summary"][scales[0].name]):
        entries = [metrics["summary"][s.name][group] for s in scales]
        if key == "score":
            y, se = [_value(e["mean"]) for e in entries], [e["se_over_seeds"] or 0 for e in entries]
        else:
            y = [_value(e[key]["mean"]) for e in entries]
            se = [e[key]["se"] or 0 for e in entries]
        ax.errorbar(x, y, yerr=se, fmt="o-", color=f"C{i}", capsize=3, label=group)
        ref = [(s.label, experiment.reference(s, group)) for s in scales]
        ref = [(a, b) for a, b in ref if b is not None]
        if ref and key == "reference_score":
            ax.plot(
                *zip(*ref, strict=True), "x--", color=f"C{i}", alpha=0.6, label=f"{group} (paper)"
            )
    floor = [_value(metrics["floors"][s.name][key]["mean"]) for s in scales]
    ax.plot(x, floor, ":", color="0.5", label="Monte Carlo floor")
    ax.set(xscale="log", yscale="log", xlabel=experiment.scale_axis, ylabel=experiment.metric)
    protocol = "jmacro protocol" if key == "score" else "reference protocol"
    ax.set_title(f"{experiment.name}: {experiment.metric} vs scale ({protocol})", fontsize=9)
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
        x,
        [_value(summary[g]["mean"]) for g in groups],
        yerr=se,
        fmt="o-",
        capsize=3,
        label="jmacro",
    )
    ref = [(float(g), experiment.reference(scale, g)) for g in groups]
    ref = [(a, b) for a, b in ref if b is not None]
    if ref:
        ax.plot(*zip(*ref, strict=True), "x--", color="C1", label="reference impl.")
    floor = _value(metrics["floors"][scale.name]["score"]["mean"])
    ax.axhline(floor, color="0.5", ls=":", label="floor")
    ax.axvline(scale.num_patches, color="0.6", lw=0.8, ls=":", label="lambda = K")
    ax.set(xlabel="covariance scale lambda", ylabel=experiment.metric)
    ax.set_title(f"{experiment.name}, {scale.name}", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path, plt)


def plot_mmd_over_time(path: Path, experiment, metrics: dict, times, scale) -> None:
    """Squared MMD between predicted and true ensembles vs time (normalised latents; mean
    over conditions, seeds and the group's model seeds), one line per group."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    groups: dict[str, list] = {}
    for result in metrics["results"][scale.name].values():
        groups.setdefault(result["group"], []).append(result["mmd_over_time"])
    for i, (group, curves) in enumerate(groups.items()):
        ax.plot(times, np.mean(curves, axis=0), color=f"C{i}", lw=1, label=group)
    ax.set(xlabel=experiment.time_unit, ylabel="squared MMD (normalised latents)")
    ax.set_title(f"{experiment.name}, {scale.name}: spread over time", fontsize=9)
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


def plot_oracle(path: Path, experiment, evaluation, variants) -> None:
    """The learned drift and covariance rate of ``variants`` against the exact ones over the
    data's range (experiments with ``exact_dynamics``)."""
    plt = _pyplot()
    grid = np.asarray(evaluation["oracle_grid"])
    exact = experiment.exact_dynamics(grid)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    labels = ("drift (per unit time)", "diffusion^2 (per unit time)")
    for ax, kind, truth, label in zip(axes, ("drift", "cov"), exact, labels, strict=True):
        ax.plot(grid[:, 0], truth[:, 0], "k-", lw=1.5, label="exact (large N)")
        for i, v in enumerate(variants):
            learned = np.asarray(evaluation[f"oracle_{kind}_{v.name}"])[:, 0]
            ax.plot(grid[:, 0], learned, "--", color=f"C{i}", label=v.group)
        ax.set(xlabel=experiment.latent_names[0], ylabel=label)
    axes[1].set_yscale("log")  # a baseline's K-fold diffusion would flatten the others
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"{experiment.name}: learned vs exact dynamics ({experiment.describe()})", fontsize=8
    )
    _save(fig, path, plt)


def _first_per_group(items, group_of) -> dict:
    """The first item of each group, in order of first appearance."""
    first: dict = {}
    for item in items:
        first.setdefault(group_of(item), item)
    return first


def _dynamics_table(metrics: dict, scale) -> list[str]:
    """Per group: the covariance ratio and the binned drift gap (+- its SE) per latent
    against the validation increments; the oracle errors where there is an oracle."""
    results = metrics["results"][scale.name]
    first = _first_per_group(results.values(), lambda r: r["group"])
    oracle = "oracle_drift_error" in next(iter(results.values()))
    head = "| group | cov ratio (data / learned) | drift gap +- SE |"
    lines = [head + (" max drift error | max diffusion^2 error |" if oracle else ""), ""]
    lines[1] = "|" + "---|" * (5 if oracle else 3)
    for group, r in first.items():
        gaps = ", ".join(
            f"{g:.2g} +- {r['drift_gap_se'][k]:.1g}" for k, g in r["drift_gap"].items()
        )
        ratios = ", ".join(f"{x:.2f}" for x in r["cov_ratio"].values())
        row = f"| {group} | {ratios} | {gaps} |"
        if oracle:
            row += f" {_pm(r['oracle_drift_error'])} | {_pm(r['oracle_cov_error'])} |"
        lines.append(row)
    return lines


def _table(experiment, metrics: dict) -> list[str]:
    """jmacro's protocol: score +- SE over seeds per scale and group, the floor, the share
    of diverged runs, the predicted/true std ratio per latent."""
    scales = experiment.scales()
    groups = list(metrics["summary"][scales[0].name])
    lines = [
        "| scale | K | " + " | ".join(groups) + " | floor | diverged | std ratio (pred/true) |",
        "|" + "---|" * (5 + len(groups)),
    ]
    for s in scales:
        summary, results = metrics["summary"][s.name], metrics["results"][s.name]
        cells = [_pm(summary[g], "mean", "se_over_seeds") for g in groups]
        diverged = ", ".join(f"{g} {summary[g]['diverged_fraction']['mean']:.0%}" for g in groups)
        ratios = "; ".join(
            f"{g}: " + ", ".join(f"{v:.2f}" for v in r["std_ratio"].values())
            for g, r in _first_per_group(results.values(), lambda r: r["group"]).items()
        )
        floor = _pm(metrics["floors"][s.name]["score"])
        lines.append(
            f"| {s.name} | {s.num_patches} | " + " | ".join(cells) + f" | {floor} | "
            f"{diverged} | {ratios} |"
        )
    return lines


def _reference_table(experiment, metrics: dict) -> list[str]:
    """The reference's protocol: score +- SE per scale and group, the paper's number and the
    ratio jmacro / paper, the floor."""
    scales = experiment.scales()
    groups = list(metrics["summary"][scales[0].name])
    head = "| scale | K | " + " | ".join(f"{g} | {g} (paper) | ratio" for g in groups)
    lines = [head + " | floor |", "|" + "---|" * (3 + 3 * len(groups))]
    for s in scales:
        cells = []
        for g in groups:
            entry, paper = (
                metrics["summary"][s.name][g]["reference_score"],
                experiment.reference(s, g),
            )
            ratio = (
                "-" if paper is None or entry["mean"] is None else f"{entry['mean'] / paper:.2g}"
            )
            cells += [_pm(entry), "-" if paper is None else f"{paper:.3g}", ratio]
        floor = _pm(metrics["floors"][s.name]["reference_score"])
        lines.append(f"| {s.name} | {s.num_patches} | " + " | ".join(cells) + f" | {floor} |")
    return lines


def write_report(run_dir: Path, experiment, metrics: dict, replicates: dict) -> None:
    """Write ``report.md`` and the PNGs of a finished run (module docstring);
    ``replicates[seed][scale]`` are the evaluation datasets (the first seed's are plotted)."""
    scales = experiment.scales()
    first = replicates[metrics["seeds"][0]]
    space = "physical" if experiment.score_space == "physical" else "normalised"
    lines = [
        f"# jmacro run: {experiment.name}, preset `{experiment.preset}`",
        "",
        f"{experiment.describe()} Wall time {metrics['wall_time_s']:.0f} s.",
        "",
        f"Every number is the mean over {metrics['num_seeds']} independent replicate(s) (master "
        f"seeds {metrics['seeds']}: own data, models and ground truth) +- its standard error. "
        "The floor is the expected score of a perfect model (two halves of the true runs, "
        "rescaled to the full ensemble size).",
        "",
        f"## jmacro's protocol: {experiment.metric} in {space} latents",
        "",
        f"Mean over the test conditions ({', '.join(experiment.conditions())}) on the fixed "
        "time grid of the test runs (lower is better).",
        "",
        *_table(experiment, metrics),
        "",
    ]
    if len(scales) > 1:
        plot_score_vs_scale(run_dir / "score_vs_scale.png", experiment, metrics)
        lines += ["![score vs scale](score_vs_scale.png)", ""]
    if "reference_score" in metrics["floors"][scales[0].name]:
        steps = len(np.asarray(first[scales[0].name]["ref_times"]))
        lines += [
            "## The reference's protocol (REFERENCE.md 3.1)",
            "",
            f"{steps} event steps of n flips, truth interpolated onto the grid of the mean "
            "step, all latents min-max scaled except the magnetisation; relative squared "
            "error of the ensemble-mean trajectory. Rollouts take Euler steps no longer than "
            "the training pairs (the reference: one per interval, its pairs lasting one). "
            "The paper's models are its last epoch, jmacro's the best on validation.",
            "",
            *_reference_table(experiment, metrics),
            "",
        ]
        if len(scales) > 1:
            name = "reference_score_vs_scale.png"
            plot_score_vs_scale(run_dir / name, experiment, metrics, "reference_score")
            lines += [f"![reference protocol]({name})", ""]
    for scale in scales:
        lines += _scale_section(run_dir, experiment, metrics, first[scale.name], scale)
    (run_dir / "report.md").write_text("\n".join(lines))


def _scale_section(run_dir, experiment, metrics, evaluation, scale) -> list[str]:
    summary = metrics["summary"][scale.name]
    lines = [f"## {scale.name}", ""]
    if len(summary) > 2 and all(_as_number(g) is not None for g in summary):
        name = f"score_vs_group_{scale.name}.png"
        plot_score_vs_group(run_dir / name, experiment, metrics, scale)
        lines += [f"![score vs group]({name})", ""]
    lines += [
        "Learned dynamics against the full-system validation increments (per latent; first "
        "model of each group, mean over replicates); a diffusion right within noise gives a "
        "covariance ratio of 1:",
        "",
        *_dynamics_table(metrics, scale),
        "",
    ]
    variants = experiment.sde_variants(scale)
    firsts = list(_first_per_group(variants, lambda v: v.group).values())
    if "oracle_grid" in evaluation:
        name = f"oracle_{scale.name}.png"
        plot_oracle(run_dir / name, experiment, evaluation, firsts)
        lines += [f"![learned vs exact dynamics]({name})", ""]
    name = f"mmd_over_time_{scale.name}.png"
    plot_mmd_over_time(run_dir / name, experiment, metrics, np.asarray(evaluation["times"]), scale)
    lines += [f"![MMD over time]({name})", ""]
    best = min(summary, key=lambda g: np.nan_to_num(_value(summary[g]["mean"]), nan=np.inf))
    groups = list(dict.fromkeys(v.group for v in variants))
    shown = list(dict.fromkeys([groups[0], best, *groups[1:2]]))[:2]
    picked = [next(v for v in variants if v.group == g) for g in shown]
    name = f"trajectories_{scale.name}.png"
    plot_trajectories(run_dir / name, experiment, evaluation, picked)
    return [*lines, f"Best group: {best}.", "", f"![latent trajectories]({name})", ""]
