"""Reproduce the test-error-vs-n_s table (REFERENCE.md section 3) for Ising and Curie-Weiss.

    python experiments/test_error_vs_patch_size.py --preset quick
    python experiments/test_error_vs_patch_size.py --preset reference-cpu   # L = 64, ~1 h on a CPU
    python experiments/test_error_vs_patch_size.py --preset paper --boundary halo   # on a GPU

Each system runs through ``jmacro.pipelines`` (cached in runs/<system>-<preset>[-<boundary>]),
then one table with ours, baseline and the reference implementation's numbers is printed.
"""

from __future__ import annotations

import argparse
import dataclasses

from jmacro.pipelines import get_config, run_spins
from jmacro.report import REFERENCE_TEST_ERROR


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset", default="quick", choices=["smoke", "quick", "reference-cpu", "paper"]
    )
    parser.add_argument("--systems", nargs="+", default=["curie-weiss", "ising"])
    parser.add_argument("--boundary", default=None, help="override the partial-evolution boundary")
    args = parser.parse_args()
    rows = []
    for system in args.systems:
        cfg = get_config(system, args.preset)
        suffix = ""
        if args.boundary:
            cfg = dataclasses.replace(cfg, boundary=args.boundary)
            suffix = f"-{args.boundary}"
        result = run_spins(cfg, f"runs/{system}-{args.preset}{suffix}")
        errors = result.metrics["test_error"]
        for ns in sorted(map(int, errors["ours"])):
            # The reference numbers are for L = 64; other sizes have other K per n_s.
            ref = (
                REFERENCE_TEST_ERROR[system]
                if cfg.large_size == 64
                else {"ours": {}, "baseline": {}}
            )
            rows.append(
                (
                    system,
                    ns,
                    errors["ours"][str(ns)],
                    errors["baseline"][str(ns)],
                    ref["ours"].get(ns),
                    ref["baseline"].get(ns),
                )
            )
    print(
        f"{'system':12} {'n_s':>6} {'ours':>10} {'baseline':>10} {'ref ours':>10} {'ref base':>10}"
    )
    for system, ns, ours, base, ref_ours, ref_base in rows:
        fmt = lambda v: f"{v:10.3g}" if v is not None else f"{'-':>10}"  # noqa: E731
        print(f"{system:12} {ns:6d} {fmt(ours)} {fmt(base)} {fmt(ref_ours)} {fmt(ref_base)}")


if __name__ == "__main__":
    main()
