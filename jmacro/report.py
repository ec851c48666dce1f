"""Run reports: PNG plots (matplotlib, Agg backend) and a ``report.md`` in the run directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# REFERENCE.md section 3, at L = 64: test error of the reference implementation per n_s.
REFERENCE_TEST_ERROR = {
    "curie-weiss": {
        "ours": {4096: 4.05e-4, 1024: 7.85e-4, 256: 1.06e-3, 64: 4.38e-3},
        "baseline": {4096: 4.08e-4, 1024: 1.01e-3, 256: 2.53e-3, 64: 1.26e-2},
    },
    "ising": {
        "ours": {4096: 1.95e-3, 1024: 4.50e-4, 256: 7.98e-4, 64: 2.84e-2},
        "baseline": {4096: 2.09e-3, 1024: 1.29e-3, 256: 3.20e-2, 64: 1.31e-1},
    },
}
LATENT_NAMES = {
    "ising": ["magnetisation", "domain-wall density", "closure 1", "closure 2"],
    "curie-weiss": ["magnetisation"],
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_error_vs_patch_size(path: Path, experiment: str, errors: dict, reference: bool) -> None:
    """Test error vs n_s on log axes, ours and baseline (+ the reference's, if comparable)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for method, colour in (("ours", "C0"), ("baseline", "C3")):
        ns = sorted(int(k) for k in errors[method])
        ax.plot(ns, [errors[method][str(n)] for n in ns], "o-", color=colour, label=method)
        if reference:
            ref = REFERENCE_TEST_ERROR[experiment][method]
            ax.plot(
                sorted(ref),
                [ref[n] for n in sorted(ref)],
                "x--",
                color=colour,
                alpha=0.5,
                label=f"{method} (reference impl.)",
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("patch size n_s (sites)")
    ax.set_ylabel("test error (relative squared)")
    ax.set_title(f"{experiment}: error of the ensemble-mean latent trajectory")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_trajectories(path: Path, experiment: str, evaluation, magnetisations) -> None:
    """Mean +- std of every latent vs time: ground truth, ours, baseline, per initial m0."""
    plt = _pyplot()
    times = np.asarray(evaluation["times"])
    truth = np.asarray(evaluation["truth"])
    d = truth.shape[-1]
    names = LATENT_NAMES.get(experiment, [])
    names = names + [f"latent {k}" for k in range(len(names), d)]
    fig, axes = plt.subplots(1, d, figsize=(3.6 * d, 3.2), squeeze=False)
    styles = (
        ("truth", truth, "k", "-"),
        ("ours", np.asarray(evaluation["pred_ours"]), "C0", "--"),
        ("baseline", np.asarray(evaluation["pred_baseline"]), "C3", ":"),
    )
    for k, ax in enumerate(axes[0]):
        for i in range(truth.shape[0]):
            for label, data, colour, style in styles:
                mean, std = data[i, :, :, k].mean(0), data[i, :, :, k].std(0)
                ax.plot(times, mean, style, color=colour, lw=1, label=label if i == 0 else None)
                ax.fill_between(times, mean - std, mean + std, color=colour, alpha=0.08)
        ax.set_title(names[k], fontsize=9)
        ax.set_xlabel("time (sweeps)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{experiment}: initial m0 = {', '.join(map(str, magnetisations))}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_spin_report(run_dir: Path, cfg, metrics: dict, evaluations: dict) -> None:
    """Write ``error_vs_patch_size.png``, ``trajectories_ns<N>.png`` and ``report.md``."""
    comparable = cfg.large_size == 64 and cfg.experiment in REFERENCE_TEST_ERROR
    plot_error_vs_patch_size(
        run_dir / "error_vs_patch_size.png", cfg.experiment, metrics["test_error"], comparable
    )
    lines = [
        f"# jmacro run: {cfg.experiment}, preset `{cfg.preset}`",
        "",
        f"Large system {cfg.large_size}x{cfg.large_size}, T = {cfg.temperature}, "
        f"h = {cfg.field}, partial-evolution boundary `{cfg.boundary}`, wall time "
        f"{metrics['wall_time_s']:.0f} s.",
        "",
        "Test error (relative squared error of the ensemble-mean latent trajectory, min-max "
        "normalised latents, averaged over the initial magnetisations):",
        "",
        "| n_s | K | ours | baseline |"
        + (" reference ours | reference baseline |" if comparable else ""),
        "|---|---|---|---|" + ("---|---|" if comparable else ""),
    ]
    for ns in sorted(evaluations):
        row = (
            f"| {ns} | {cfg.large_size**2 // ns} | {metrics['test_error']['ours'][str(ns)]:.3g}"
            f" | {metrics['test_error']['baseline'][str(ns)]:.3g} |"
        )
        if comparable:
            ref = REFERENCE_TEST_ERROR[cfg.experiment]
            row += f" {ref['ours'].get(ns, float('nan')):.3g} | "
            row += f"{ref['baseline'].get(ns, float('nan')):.3g} |"
        lines.append(row)
    lines += ["", "![test error vs patch size](error_vs_patch_size.png)", ""]
    for ns, evaluation in sorted(evaluations.items()):
        name = f"trajectories_ns{ns}.png"
        plot_trajectories(run_dir / name, cfg.experiment, evaluation, cfg.test_magnetisations)
        lines += [f"## n_s = {ns}", "", f"![latent trajectories, n_s = {ns}]({name})", ""]
    (run_dir / "report.md").write_text("\n".join(lines))


# REFERENCE.md section 3: the reference implementation's predator-prey average MMD per lambda.
REFERENCE_PREDATOR_PREY_MMD = {
    1.0: 0.0798,
    2.5: 0.0676,
    5.0: 0.0632,
    10.0: 0.0754,
    15.0: 0.0740,
    20.0: 0.0756,
}
FIELD_LATENT_NAMES = ["<u>", "<v>", "closure u", "closure v"]


def write_predator_prey_report(run_dir: Path, cfg, metrics: dict, evaluation) -> None:
    """Write ``mmd_vs_lambda.png``, ``mmd_over_time.png``, ``trajectories.png`` and
    ``report.md`` for a predator-prey run."""
    from jmacro.pipelines.predator_prey import _model_tag

    plt = _pyplot()
    lambdas = [float(lam) for lam in metrics["mmd_mean"]]
    means = [metrics["mmd_mean"][lam] for lam in metrics["mmd_mean"]]
    stds = [metrics["mmd_std_over_seeds"][lam] for lam in metrics["mmd_mean"]]
    comparable = cfg.large_cells == 200 and cfg.num_patches == 5

    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.errorbar(lambdas, means, yerr=stds, fmt="o-", color="C0", capsize=3, label="jmacro")
    if comparable:
        ref = sorted(REFERENCE_PREDATOR_PREY_MMD.items())
        ax.plot(*zip(*ref, strict=True), "x--", color="C1", label="reference impl.")
    ax.axvline(cfg.num_patches, color="0.6", lw=0.8, ls=":", label="lambda = K")
    ax.set_xlabel("covariance scale lambda")
    ax.set_ylabel("MMD (mean over time and test conditions)")
    ax.set_title(f"predator-prey, K = {cfg.num_patches}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run_dir / "mmd_vs_lambda.png", dpi=120)
    plt.close(fig)

    times = np.asarray(evaluation["times"])
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, lam in enumerate(metrics["mmd_mean"]):
        curves = [
            np.asarray(evaluation[f"mmd_{_model_tag(float(lam), seed)}"]).mean(0)
            for seed in cfg.seeds
        ]
        ax.plot(times, np.mean(curves, axis=0), color=f"C{i}", lw=1, label=f"lambda = {lam}")
    ax.set_xlabel("time")
    ax.set_ylabel("MMD (mean over test conditions)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run_dir / "mmd_over_time.png", dpi=120)
    plt.close(fig)

    truth = np.asarray(evaluation["truth"])  # (C, R, T+1, d)
    best = metrics["best_lambda"]
    pred = np.asarray(evaluation[f"pred_{_model_tag(float(best), cfg.seeds[0])}"])
    d = truth.shape[-1]
    fig, axes = plt.subplots(1, d, figsize=(3.6 * d, 3.2), squeeze=False)
    for k, ax in enumerate(axes[0]):
        for c in range(truth.shape[0]):
            for label, data, colour, style in (
                ("truth", truth, "k", "-"),
                (f"ours, lambda = {best}", pred, "C0", "--"),
            ):
                mean, std = data[c, :, :, k].mean(0), data[c, :, :, k].std(0)
                ax.plot(times, mean, style, color=colour, lw=1, label=label if c == 0 else None)
                ax.fill_between(times, mean - std, mean + std, color=colour, alpha=0.08)
        ax.set_title(FIELD_LATENT_NAMES[k] if k < len(FIELD_LATENT_NAMES) else f"latent {k}")
        ax.set_xlabel("time")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run_dir / "trajectories.png", dpi=110)
    plt.close(fig)

    lines = [
        f"# jmacro run: predator-prey, preset `{cfg.preset}`",
        "",
        f"{cfg.large_cells} cells learned from {cfg.small_cells}-cell simulations, K = "
        f"{cfg.num_patches} patches of {cfg.patch_cells} cells, sigma = {cfg.sigma}, "
        f"dt = {cfg.dt}; {len(cfg.seeds)} seed(s) per lambda; wall time "
        f"{metrics['wall_time_s']:.0f} s.",
        "",
        "Average MMD between predicted and true latent ensembles (standardised latents, mean "
        "over time and the test grid of (k, m)):",
        "",
        "| lambda | MMD (mean over seeds) | std over seeds |"
        + (" reference impl. |" if comparable else ""),
        "|---|---|---|" + ("---|" if comparable else ""),
    ]
    for lam, mean, std in zip(metrics["mmd_mean"], means, stds, strict=True):
        row = f"| {lam} | {mean:.4g} | {std:.2g} |"
        if comparable:
            ref = REFERENCE_PREDATOR_PREY_MMD.get(float(lam))
            row += f" {ref:.4g} |" if ref is not None else " - |"
        lines.append(row)
    lines += [
        "",
        f"Best lambda: {best} (Theorem 1 predicts lambda = K = {cfg.num_patches}).",
        "",
        "Fraction of rollouts that diverge (leave +-10 truth ranges) per lambda and seed: "
        + "; ".join(
            f"{lam}: " + ", ".join(f"{v:.2f}" for v in seeds.values())
            for lam, seeds in metrics["diverged_fraction"].items()
        )
        + ".",
        "",
        "![MMD vs lambda](mmd_vs_lambda.png)",
        "",
        "![MMD over time](mmd_over_time.png)",
        "",
        "![latent trajectories](trajectories.png)",
        "",
    ]
    (run_dir / "report.md").write_text("\n".join(lines))
