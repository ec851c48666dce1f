"""Reproduce the test-error-vs-n_s table (REFERENCE.md section 3) for Ising and Curie-Weiss.

    python experiments/test_error_vs_patch_size.py --preset quick
    python experiments/test_error_vs_patch_size.py --preset reference-cpu   # L = 64, ~1 h on a CPU
    python experiments/test_error_vs_patch_size.py --preset paper --boundary halo   # on a GPU

Each system runs through ``jmacro.pipelines.run`` (its default run directory, stages cached in
runs/stages), then one table with ours, baseline and the reference implementation's numbers.
"""

from __future__ import annotations

import argparse

from jmacro.pipelines import get_experiment, run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset", default="quick", choices=["smoke", "quick", "reference-cpu", "paper"]
    )
    parser.add_argument("--systems", nargs="+", default=["curie-weiss", "ising"])
    parser.add_argument("--boundary", default=None, help="override the partial-evolution boundary")
    args = parser.parse_args()
    print(
        f"{'system':12} {'n_s':>6} {'ours':>10} {'baseline':>10} {'ref ours':>10} {'ref base':>10}"
    )
    for system in args.systems:
        overrides = {"pairs": {"boundary": args.boundary}} if args.boundary else {}
        cfg = get_experiment(system, args.preset, **overrides)
        summary = run(cfg).metrics["summary"]
        for scale in cfg.scales():
            cells = [summary[scale.name][g]["mean"] for g in ("ours", "baseline")]
            cells += [cfg.reference(scale, g) for g in ("ours", "baseline")]
            text = " ".join(f"{v:10.3g}" if v is not None else f"{'-':>10}" for v in cells)
            print(f"{system:12} {int(scale.label):6d} {text}")


if __name__ == "__main__":
    main()
