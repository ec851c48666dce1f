"""Scores of a finished run, from its evaluation stages alone: two protocols, error bars,
Monte Carlo floors and the spread of the predictions.

For every replicate (an independent master seed: its own data, models and ground truth),
scale and SDE variant:

- ``score``: jmacro's protocol, the experiment's ``score`` on the fixed time grid of the test
  runs, in physical latents (``score_space = "physical"``: the spin experiments' known
  observables, unscaled) or in the normalised latents the SDE sees (``"normalised"``);
- ``reference_score`` (when the truth has event-stepped runs): the reference's protocol
  (REFERENCE.md 3.1): relative squared error of the ensemble-mean trajectory over every latent,
  on the grid of the mean event step, in the experiment's ``reference_coordinates``;
- ``mmd``: time-averaged squared MMD between predicted and true ensembles (normalised
  latents); ``std_ratio``: predicted / true standard deviation per latent, from the variances
  averaged over t > 0 (invariant under the per-latent affine normalisation);
- ``diverged_fraction``: predicted runs that leave 10 truth ranges or turn non-finite; the
  scores are computed over the finite runs only, and the fraction is reported beside them;
- the learned dynamics against the full-system validation increments (physical units), per
  latent: ``cov_ratio`` = mean(r^2 / dt) / mean(learned covariance rate) with the residual
  r = dz - drift dt (1 for a right diffusion), and ``drift_gap`` = the largest difference
  between the mean of dz / dt and the mean learned drift over quantile bins of the first
  latent (10, or fewer to keep >= 20 pairs per bin), with ``drift_gap_se`` its standard error;
- with an exact oracle (``exact_dynamics``, Curie-Weiss): ``oracle_drift_error`` = max |learned
  - exact drift| and ``oracle_cov_error`` = max |learned / exact covariance rate - 1| over the
  data's range.

Floors: the same score between two disjoint halves of the ground-truth runs (h = R // 2 runs
each), multiplied by h / R: both metrics' noise terms scale as 1/R_a + 1/R_b (the squared
difference of two ensemble means; the V-statistic MMD), so this is the expected score of a
perfect model rolled out from the R test runs against the R true runs.

Error bars: the mean over replicates with the standard error over replicates (``se``); for a
group of several model seeds per replicate, its replicate value is the mean over those seeds,
and ``model_se`` is the standard error over model seeds within a replicate (averaged).
"""

from __future__ import annotations

import numpy as np

from jmacro.metrics import diverged_fraction, mmd_per_time, relative_squared_error


def mean_se(values) -> dict:
    """``{"mean", "se", "n", "nonfinite"}`` of independent values: the finite ones' mean and
    standard error (se None for fewer than two; mean None for none), how many were not
    finite (a replicate whose every rollout diverged), never a NaN in the JSON."""
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    se = float(finite.std(ddof=1) / np.sqrt(len(finite))) if len(finite) > 1 else None
    mean = float(finite.mean()) if len(finite) else None
    return {"mean": mean, "se": se, "n": len(finite), "nonfinite": len(values) - len(finite)}


def _normalise(z, evaluation):
    return (z - np.asarray(evaluation["norm_offset"])) / np.asarray(evaluation["norm_scale"])


def _own_coordinates(exp, z, evaluation):
    return _normalise(z, evaluation) if exp.score_space == "normalised" else z


def _per_condition(score_fn, pred, truth) -> np.ndarray:
    """``score_fn`` per condition over the finite predicted runs, averaged over time."""
    out = []
    for p, t in zip(pred, truth, strict=True):
        p = p[np.isfinite(p).all(axis=(1, 2))]
        out.append(np.nan if len(p) == 0 else float(np.mean(np.asarray(score_fn(p, t)))))
    return np.asarray(out)


def floor(score_fn, truth) -> float:
    """Expected score of a perfect R-run prediction against the R true runs (module doc)."""
    half = truth.shape[1] // 2
    if half == 0:
        return float("nan")
    halves = _per_condition(score_fn, truth[:, :half], truth[:, half : 2 * half])
    return float(np.mean(halves) * half / truth.shape[1])


def _reference_coordinates(exp, z, evaluation):
    offset, scale = exp.reference_coordinates(
        np.asarray(evaluation["norm_offset"]), np.asarray(evaluation["norm_scale"])
    )
    return (z - offset) / scale


def _std_ratio(pred, truth) -> np.ndarray:
    """Per latent, sqrt(mean_{t>0} Var_pred / mean_{t>0} Var_true), averaged over conditions."""
    ratios = []
    for p, t in zip(pred, truth, strict=True):
        p = p[np.isfinite(p).all(axis=(1, 2))]
        if len(p) > 1:
            ratios.append(np.sqrt(p[:, 1:].var(0).mean(0) / t[:, 1:].var(0).mean(0)))
    return np.mean(ratios, axis=0) if ratios else np.full(truth.shape[-1], np.nan)


def score_variant(exp, evaluation, variant) -> dict:
    """One replicate's scores of one variant (module docstring), as host floats/arrays."""
    truth, pred = np.asarray(evaluation["truth"]), np.asarray(evaluation[f"pred_{variant.name}"])
    own_t, own_p = (_own_coordinates(exp, z, evaluation) for z in (truth, pred))
    norm_t, norm_p = (_normalise(z, evaluation) for z in (truth, pred))
    per_condition = _per_condition(exp.score, own_p, own_t)
    out = {
        "score": float(np.mean(per_condition)),
        "per_condition": per_condition,
        "mmd_over_time": np.mean(
            [np.asarray(mmd_per_time(p, t)) for p, t in zip(norm_p, norm_t, strict=True)], 0
        ),
        "std_ratio": _std_ratio(pred, truth),
        "diverged_fraction": diverged_fraction(pred, truth),
    }
    out["mmd"] = float(np.mean(out["mmd_over_time"]))
    out.update(_dynamics_checks(exp, evaluation, variant))
    if "ref_truth" in evaluation:
        ref_t = _reference_coordinates(exp, np.asarray(evaluation["ref_truth"]), evaluation)
        ref_p = np.asarray(evaluation[f"ref_pred_{variant.name}"])
        ref_p = _reference_coordinates(exp, ref_p, evaluation)
        out["reference_score"] = float(
            np.mean(_per_condition(relative_squared_error, ref_p, ref_t))
        )
        out["reference_diverged_fraction"] = diverged_fraction(ref_p, ref_t)
    return out


def _dynamics_checks(exp, evaluation, variant) -> dict:
    """The learned drift and covariance against the validation increments and the oracle."""
    z0, dz = np.asarray(evaluation["val_z0"]), np.asarray(evaluation["val_dz"])
    dt = np.asarray(evaluation["val_dt"])[:, None]
    drift = np.asarray(evaluation[f"val_drift_{variant.name}"])
    cov = np.asarray(evaluation[f"val_cov_{variant.name}"])
    residual = dz - drift * dt
    out = {"cov_ratio": np.mean(residual**2 / dt, 0) / np.mean(cov, 0)}
    num_bins = max(1, min(10, len(z0) // 20))  # >= 20 pairs per bin
    edges = np.quantile(z0[:, 0], np.linspace(0, 1, num_bins + 1))
    bins = np.clip(np.searchsorted(edges, z0[:, 0], side="right") - 1, 0, num_bins - 1)
    gaps, ses = [], []
    for b in range(num_bins):
        rate, inside = dz[bins == b] / dt[bins == b], bins == b
        if inside.sum() > 1:
            gaps.append(np.abs(rate.mean(0) - drift[inside].mean(0)))
            ses.append(rate.std(0, ddof=1) / np.sqrt(inside.sum()))
    worst = np.argmax(np.asarray(gaps), axis=0)
    out["drift_gap"] = np.asarray(gaps)[worst, np.arange(dz.shape[1])]
    out["drift_gap_se"] = np.asarray(ses)[worst, np.arange(dz.shape[1])]
    if "oracle_grid" in evaluation:
        exact_drift, exact_cov = exp.exact_dynamics(np.asarray(evaluation["oracle_grid"]))
        learned = np.asarray(evaluation[f"oracle_drift_{variant.name}"])
        learned_cov = np.asarray(evaluation[f"oracle_cov_{variant.name}"])
        out["oracle_drift_error"] = float(np.max(np.abs(learned - exact_drift)))
        out["oracle_cov_error"] = float(np.max(np.abs(learned_cov / exact_cov - 1)))
    return out


def floors(exp, evaluation) -> dict:
    """Monte Carlo floors of one replicate's scores (module docstring)."""
    truth = _own_coordinates(exp, np.asarray(evaluation["truth"]), evaluation)
    out = {"score": floor(exp.score, truth)}
    if "ref_truth" in evaluation:
        ref = _reference_coordinates(exp, np.asarray(evaluation["ref_truth"]), evaluation)
        out["reference_score"] = floor(relative_squared_error, ref)
    return out


_SCALARS = (
    "score",
    "reference_score",
    "mmd",
    "diverged_fraction",
    "reference_diverged_fraction",
    "oracle_drift_error",
    "oracle_cov_error",
)
_PER_LATENT = ("std_ratio", "cov_ratio", "drift_gap", "drift_gap_se")


def summarise(exp, replicates: dict) -> dict:
    """``metrics.json``'s scientific content from ``replicates[seed][scale] = evaluation``.

    Returns ``{"experiment", "preset", "metric", "num_seeds", "seeds", "results", "summary",
    "floors"}``: ``results[scale][variant]`` has each scalar of ``score_variant`` as
    ``mean_se`` over replicates, ``per_condition`` and ``std_ratio`` (per latent) as means;
    ``summary[scale][group]`` the group's ``score`` (``mean``, ``se_over_seeds``,
    ``num_seeds``, ``model_se``) and the other scalars as ``mean_se``; ``floors[scale]``
    the floors as ``mean_se``.
    """
    seeds = list(replicates)
    results, summary, floor_summary = {}, {}, {}
    names = list(exp.latent_names)
    for scale in exp.scales():
        variants = exp.sde_variants(scale)
        runs = {
            v: [score_variant(exp, replicates[s][scale.name], v) for s in seeds] for v in variants
        }
        results[scale.name] = {v.name: _variant_result(exp, v, runs[v], names) for v in variants}
        summary[scale.name] = {
            group: _group_summary([runs[v] for v in variants if v.group == group])
            for group in dict.fromkeys(v.group for v in variants)
        }
        per_seed = [floors(exp, replicates[s][scale.name]) for s in seeds]
        floor_summary[scale.name] = {k: mean_se([f[k] for f in per_seed]) for k in per_seed[0]}
    return {
        "experiment": exp.name,
        "preset": exp.preset,
        "metric": exp.metric,
        "score_space": exp.score_space,
        "num_seeds": len(seeds),
        "seeds": seeds,
        "results": results,
        "summary": summary,
        "floors": floor_summary,
    }


def _variant_result(exp, variant, runs: list[dict], names: list[str]) -> dict:
    per_condition = np.mean([r["per_condition"] for r in runs], axis=0)
    return {
        "group": variant.group,
        "seed": variant.seed,
        "covariance_scale": variant.covariance_scale,
        **{k: mean_se([r[k] for r in runs]) for k in _SCALARS if k in runs[0]},
        "per_replicate": [r["score"] for r in runs],
        "mmd_over_time": [float(x) for x in np.mean([r["mmd_over_time"] for r in runs], 0)],
        "per_condition": dict(zip(exp.conditions(), map(float, per_condition), strict=True)),
        **{key: _by_latent(np.mean([r[key] for r in runs], axis=0), names) for key in _PER_LATENT},
    }


def _by_latent(values, names: list[str]) -> dict:
    return {(names[k] if k < len(names) else f"latent {k}"): float(x) for k, x in enumerate(values)}


def _group_summary(members: list[list[dict]]) -> dict:
    """``members[model_seed][replicate]`` score dicts -> the group's summary."""
    by_replicate = list(zip(*members, strict=True))
    out = {}
    for key in (k for k in _SCALARS if k in members[0][0]):
        out[key] = mean_se([np.mean([r[key] for r in rep]) for rep in by_replicate])
    score = out.pop("score")
    model_se = None
    if len(members) > 1:
        model_se = float(
            np.mean([np.std([r["score"] for r in rep], ddof=1) for rep in by_replicate])
            / np.sqrt(len(members))
        )
    return {
        "mean": score["mean"],
        "se_over_seeds": score["se"],
        "num_seeds": score["n"],
        "model_se": model_se,
        **out,
    }
