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
- ``trajectories_<scale>.png``: mean +- std of every latent per test condition (one colour
  each), truth and up to two groups; diverging predictions clipped and flagged;
- ``training_<scale>.png``: the SDEs' training and validation losses per epoch, kept model marked.
"""

from __future__ import annotations

import json
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


def plot_mmd_over_time(path: Path, experiment, metrics: dict, times, scale, xlabel=None) -> None:
    """Squared MMD between predicted and true ensembles vs time (normalised latents; mean
    over conditions, seeds and the group's model seeds), one line per group; x axis label
    ``xlabel`` (default the experiment's time unit)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    groups: dict[str, list] = {}
    for result in metrics["results"][scale.name].values():
        groups.setdefault(result["group"], []).append(result["mmd_over_time"])
    for i, (group, curves) in enumerate(groups.items()):
        ax.plot(times, np.mean(curves, axis=0), color=f"C{i}", lw=1, label=group)
    ax.set(xlabel=xlabel or experiment.time_unit, ylabel="squared MMD (normalised latents)")
    ax.set_title(f"{experiment.name}, {scale.name}: spread over time", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path, plt)


def _latent_label(name: str) -> str:
    """A y-axis label with units: the spin observables are per-site averages, learned closure
    variables have no physical unit."""
    units = {
        "magnetisation": "magnetisation m (per spin)",
        "domain-wall density": "domain-wall density (per bond)",
    }
    if name.startswith("closure") or name.startswith("latent"):
        return f"{name} (learned, arbitrary units)"
    return units.get(name, name)


def _robust_range(truth_lo: np.ndarray, truth_hi: np.ndarray, curves: list[np.ndarray]):
    """Axis limits that show the truth's band and every prediction that stays within one
    band-width of it, and the indices of the curves that leave that window (clipped)."""
    lo, hi = float(np.nanmin(truth_lo)), float(np.nanmax(truth_hi))
    width = max(hi - lo, 1e-3 * max(abs(lo), abs(hi), 1.0))
    allowed = (lo - width, hi + width)
    off = []
    for i, curve in enumerate(curves):
        finite = curve[np.isfinite(curve)]
        if finite.size < curve.size or (
            finite.size and (finite.min() < allowed[0] or finite.max() > allowed[1])
        ):
            off.append(i)
            continue
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    pad = 0.06 * max(hi - lo, width)
    return (lo - pad, hi + pad), off


def plot_trajectories(path: Path, experiment, evaluation, variants) -> list[str]:
    """Ensemble mean (lines) and +- one standard deviation (bands) of every latent vs time, per
    test condition (one colour each): the truth solid, each of ``variants`` in its own line
    style. The axes are set by the truth; a prediction that leaves them by more than the
    truth's own range is clipped and flagged in the panel. Returns the flags, e.g.
    ``"baseline (magnetisation)"``."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    truth = np.asarray(evaluation["truth"])  # (C, R, T+1, d)
    num_conditions, d = truth.shape[0], truth.shape[-1]
    grids = np.broadcast_to(evaluation["times"], truth.shape[0:1] + truth.shape[2:3])
    names = list(experiment.latent_names) + [f"latent {k}" for k in range(d)]
    conditions = experiment.conditions()
    preds = [np.asarray(evaluation[f"pred_{v.name}"], np.float64) for v in variants]
    styles = ["--", ":", "-."]
    cmap = plt.get_cmap("viridis" if num_conditions > 10 else "tab10")
    colours = [cmap(c / max(num_conditions - 1, 1) if num_conditions > 10 else c) for c in
               range(num_conditions)]  # fmt: skip
    flags = []
    fig, axes = plt.subplots(1, d, figsize=(3.6 * d, 3.4), squeeze=False)
    with np.errstate(invalid="ignore", over="ignore"):
        for k, ax in enumerate(axes[0]):
            t_mean, t_std = truth[..., k].mean(1), truth[..., k].std(1)  # (C, T+1)
            p_mean = [p[..., k].mean(1) for p in preds]
            p_std = [p[..., k].std(1) for p in preds]
            ylim, off = _robust_range(t_mean - t_std, t_mean + t_std, [m.ravel() for m in p_mean])
            for c in range(num_conditions):
                colour = colours[c]
                times = grids[c]
                ax.plot(times, t_mean[c], "-", color=colour, lw=1.2)
                ax.fill_between(
                    times, t_mean[c] - t_std[c], t_mean[c] + t_std[c], color=colour, alpha=0.15
                )
                for i, (mean, std) in enumerate(zip(p_mean, p_std, strict=True)):
                    ax.plot(times, mean[c], styles[i % 3], color=colour, lw=1)
                    if i not in off:
                        ax.fill_between(
                            times, mean[c] - std[c], mean[c] + std[c], color=colour, alpha=0.05
                        )
            ax.set_ylim(*ylim)
            for n, i in enumerate(off):
                flags.append(f"{variants[i].group} ({names[k]})")
                ax.text(
                    0.02, 0.97 - 0.07 * n, f"{variants[i].group}: off scale, clipped",
                    transform=ax.transAxes, fontsize=7, va="top", color="firebrick",
                )  # fmt: skip
            ax.set_ylabel(_latent_label(names[k]), fontsize=8)
            ax.set_xlabel(experiment.time_unit)
    methods = [Line2D([], [], color="k", ls="-", label="truth")] + [
        Line2D([], [], color="k", ls=styles[i % 3], label=v.group) for i, v in enumerate(variants)
    ]
    where = [Line2D([], [], color=colours[c], lw=3, label=conditions[c]) for c in
             range(num_conditions)]  # fmt: skip
    first = axes[0][0].legend(handles=methods, fontsize=7, loc="lower left")
    axes[0][0].add_artist(first)
    axes[0][-1].legend(handles=where, fontsize=7, loc="lower right", ncol=1 + num_conditions // 5)
    fig.suptitle(
        f"{experiment.name}: test ensembles, mean and +- 1 std (bands) per initial condition",
        fontsize=8,
    )
    _save(fig, path, plt)
    return flags


def plot_training(path: Path, histories: dict[str, list[dict]]) -> dict[str, tuple[int, int]]:
    """Training and validation loss per epoch of each SDE (``histories[group]``: the records
    of ``history.json``), the kept model (best validation loss) marked. Losses are negative
    log-likelihoods that can span decades of either sign: symmetric-log axis. Returns
    ``{group: (kept epoch, epochs)}``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    kept = {}
    for i, (group, history) in enumerate(histories.items()):
        epochs = [r["epoch"] for r in history]
        val = [r["val_loss"] for r in history]
        ax.plot(epochs, [r["train_loss"] for r in history], "-", color=f"C{i}", lw=1,
                label=f"{group} train")  # fmt: skip
        ax.plot(epochs, val, "--", color=f"C{i}", lw=1, label=f"{group} validation")
        best = int(np.nanargmin(val))
        ax.plot(epochs[best], val[best], "o", color=f"C{i}", ms=5)
        kept[group] = (epochs[best], len(history))
    ax.set_yscale("symlog", linthresh=1.0)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(xlabel="epoch", ylabel="loss (negative log-likelihood)")
    ax.set_title("SDE training (dot: the kept model, best validation loss)", fontsize=8)
    ax.legend(fontsize=7)
    _save(fig, path, plt)
    return kept


def _histories(metrics: dict, scale, variants) -> dict[str, list[dict]]:
    """The first replicate's ``history.json`` of each variant's SDE stage, by group."""
    seed, found = metrics["seeds"][0], {}
    for v in variants:
        stage = metrics.get("stages", {}).get(f"seed{seed}/{scale.name}_sde_{v.name}")
        path = Path(stage) / "history.json" if stage else None
        if path is not None and path.is_file():
            found[v.group] = json.loads(path.read_text())
    return found


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
            "## The reference's protocol (docs/reference.md)",
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
    lines += experiment.report_sections(run_dir, metrics, replicates)
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
    times, xlabel = np.asarray(evaluation["times"]), None
    if times.ndim == 2:  # one grid per condition: plot against the fraction of each horizon
        times, xlabel = np.linspace(0.0, 1.0, times.shape[1]), "time / the condition's horizon"
    plot_mmd_over_time(run_dir / name, experiment, metrics, times, scale, xlabel)
    lines += [f"![MMD over time]({name})", ""]
    best = min(summary, key=lambda g: np.nan_to_num(_value(summary[g]["mean"]), nan=np.inf))
    groups = list(dict.fromkeys(v.group for v in variants))
    shown = list(dict.fromkeys([groups[0], best, *groups[1:2]]))[:2]
    picked = [next(v for v in variants if v.group == g) for g in shown]
    name = f"trajectories_{scale.name}.png"
    flags = plot_trajectories(run_dir / name, experiment, evaluation, picked)
    lines += [f"Best group: {best}.", "", f"![latent trajectories]({name})", ""]
    if flags:
        lines += [f"Off scale in the plot (diverging, clipped): {', '.join(flags)}.", ""]
    histories = _histories(metrics, scale, firsts)
    if histories:
        name = f"training_{scale.name}.png"
        kept = plot_training(run_dir / name, histories)
        summary = ", ".join(f"{g} epoch {e} of {n}" for g, (e, n) in kept.items())
        lines += [f"Kept models (best validation loss): {summary}.", "", f"![training]({name})", ""]
    return lines
