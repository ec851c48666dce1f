"""Reproduce the test-error-vs-n_s table (REFERENCE.md section 3) for Ising and Curie-Weiss.

    python experiments/test_error_vs_patch_size.py --preset quick
    python experiments/test_error_vs_patch_size.py --preset reference-cpu   # L = 64, ~1 h on a CPU
    python experiments/test_error_vs_patch_size.py --preset paper --boundary halo   # on a GPU

Each system runs through ``jmacro.pipelines.run`` (its default run directory, stages cached in
runs/stages, 3 replicate seeds), then one Markdown table: jmacro's protocol and the reference's
(REFERENCE.md 3.1), each with standard errors over seeds and its Monte Carlo floor, beside the
reference implementation's numbers and the ratio.
"""

from __future__ import annotations

import argparse

from jmacro.pipelines import get_experiment, run


def _pm(entry) -> str:
    se = entry.get("se", entry.get("se_over_seeds"))
    if entry["mean"] is None:
        return "diverged"
    return f"{entry['mean']:.3g}" + (f" +- {se:.2g}" if se is not None else "")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset", default="quick", choices=["smoke", "quick", "reference-cpu", "paper"]
    )
    parser.add_argument("--systems", nargs="+", default=["curie-weiss", "ising"])
    parser.add_argument("--boundary", default=None, help="override the partial-evolution boundary")
    args = parser.parse_args()
    print(
        "| system | n_s (K) | jmacro protocol: ours | baseline | floor | reference protocol: "
        "ours | baseline | floor | paper ours | paper baseline | ours / paper |"
    )
    print("|" + "---|" * 11)
    for system in args.systems:
        overrides = {"pairs": {"boundary": args.boundary}} if args.boundary else {}
        cfg = get_experiment(system, args.preset, **overrides)
        metrics = run(cfg).metrics
        for scale in cfg.scales():
            groups, floors = metrics["summary"][scale.name], metrics["floors"][scale.name]
            cells = [_pm(groups[g]) for g in ("ours", "baseline")] + [_pm(floors["score"])]
            paper = [cfg.reference(scale, g) for g in ("ours", "baseline")]
            if "reference_score" in floors:
                cells += [_pm(groups[g]["reference_score"]) for g in ("ours", "baseline")]
                cells += [_pm(floors["reference_score"])]
                ours = groups["ours"]["reference_score"]["mean"]
                ratio = f"{ours / paper[0]:.2g}" if paper[0] and ours is not None else "-"
            else:
                cells += ["-"] * 3
                ratio = "-"
            cells += [f"{v:.3g}" if v is not None else "-" for v in paper] + [ratio]
            label = f"{int(scale.label)} ({scale.num_patches})"
            print(f"| {system} | {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
