"""Fit the built-in KRA barrier model to the 1,024 DFT NEB barriers of equimolar NbMoTa.

Model (``jmacro.systems.barriers.KRABarrier``): E_b = E0[A] + (E_f - E_i) / 2, first- and
second-shell pair energies V1, V2 (6 each), E0 per species (3): 15 parameters, and E_b is
linear in them. The design matrix is the Jacobian of the library's own barrier function with
respect to the parameters (exact, since E_b is linear), so the fit and the KMC use one code path.

Data (``--data``, UCICaoLab/First-principle-NNK ``DFT_training_data/NbMoTa``, MIT): ``POSCAR``
(a 128-atom, 4^3-cell BCC cell), ``atomid_for_NN.txt`` (row i: the one-based ids of the 8 first
neighbours of the vacancy made by removing atom i) and ``barrier_for_NN.txt`` (the barrier, eV,
of each of those atoms jumping into the vacancy).

Fit: ridge least squares, the 12 pair energies penalised (lambda ||V||^2; the E0 free). A
uniform shift of all V of a shell leaves every E_f - E_i unchanged (each site has the same
number of atom neighbours before and after), so ridge also fixes that gauge. Error: k-fold
cross-validation grouped by vacancy (the 8 barriers of one vacancy share its environment, so
they go to the same fold), lambda chosen inside each training fold by an inner grouped CV
(nested: the reported error never saw its test fold). The final parameters are fitted on all
data with lambda from a grouped CV on all data, and written with their provenance into
``jmacro/systems/_kra_nbmota.py``.

Usage::

    .venv/bin/python experiments/fit_kra.py [--data DIR] [--folds 8] [--dry-run]
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jmacro import bcc
from jmacro.io.structures import read_poscar
from jmacro.systems.barriers import PAIR_NAMES, KRABarrier

_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = _ROOT.parent / "shared" / "data" / "nbmota" / "dft_barriers_NbMoTa"
OUTPUT = _ROOT / "jmacro" / "systems" / "_kra_nbmota.py"
LAMBDAS = (1e-3, 1e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
NUM_PARAMS = 15  # E0 (3), V1 (6), V2 (6)


def load_dft_barriers(directory: str | Path):
    """``(occupancies (128, L, L, L, 2) int8, vacancies (128, 3), barriers (128, 8) eV)``:
    row i is the cell with atom i removed, its barriers reordered into ``bcc.FIRST_SHELL``
    direction order."""
    directory = Path(directory)
    missing = [n for n in ("POSCAR", "atomid_for_NN.txt", "barrier_for_NN.txt")
               if not (directory / n).is_file()]  # fmt: skip
    if missing:
        raise FileNotFoundError(f"{directory} lacks {missing}; pass --data DIR of the DFT set.")
    cell = read_poscar(directory / "POSCAR")
    if cell.elements != ("Nb", "Mo", "Ta"):
        raise ValueError(f"expected elements Nb Mo Ta, got {cell.elements}.")
    num_cells = round((len(cell.types) / 2) ** (1 / 3))
    side = 2 * num_cells
    grid = bcc.voxels_from_positions(cell.positions, cell.types, cell.box[0] / side, side)
    voxels = np.mod(np.rint(cell.positions / (cell.box[0] / side)).astype(np.int64), side)
    ids = np.loadtxt(directory / "atomid_for_NN.txt", dtype=np.int64) - 1
    energies = np.loadtxt(directory / "barrier_for_NN.txt")
    full = np.asarray(bcc.voxels_to_occupancy(jnp.asarray(grid)))
    occupancies, barriers = [], np.zeros(energies.shape)
    for i, (row_ids, row_e) in enumerate(zip(ids, energies, strict=True)):
        vacant = full.copy()
        vacant[(*(voxels[i] // 2), voxels[i][0] % 2)] = bcc.VACANCY
        occupancies.append(vacant)
        offset = np.mod(voxels[row_ids] - voxels[i] + 1, side) - 1  # in {-1, +1} if first shell
        if np.any(np.abs(offset) != 1):
            raise ValueError(f"row {i}: the listed atoms are not first neighbours of atom {i}.")
        direction = ((offset > 0) * np.array([4, 2, 1])).sum(1)
        barriers[i, direction] = row_e
    return np.stack(occupancies), voxels.astype(np.int32), barriers


def _model(theta):
    return KRABarrier.from_parameters(theta[:3], theta[3:9], theta[9:])


def design_matrix(occupancies, vacancies) -> np.ndarray:
    """(samples, 8, 15): d E_b / d theta at each vacancy and direction (E_b is linear)."""

    def barriers(theta, occupancy, vacancy):
        return _model(theta).barriers(occupancy, vacancy)

    jac = jax.vmap(jax.jacfwd(barriers), (None, 0, 0))
    return np.asarray(jac(jnp.zeros(NUM_PARAMS), occupancies, vacancies), np.float64)


def ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """argmin |y - x theta|^2 + lam |theta[3:]|^2 (the E0 unpenalised)."""
    penalty = np.diag([0.0] * 3 + [lam] * (NUM_PARAMS - 3))
    return np.linalg.solve(x.T @ x + penalty, x.T @ y)


def grouped_folds(num_groups: int, num_folds: int, seed: int) -> list[np.ndarray]:
    """The groups (vacancies) shuffled and split into ``num_folds`` near-equal folds."""
    order = np.random.default_rng(seed).permutation(num_groups)
    return np.array_split(order, num_folds)


def cv_predictions(x, y, groups_per_fold, lam_fn):
    """Out-of-fold predictions (x: (G, 8, P), y: (G, 8)) and the lambda of each fold."""
    pred, lams = np.zeros_like(y), []
    for test in groups_per_fold:
        train = np.setdiff1d(np.arange(len(y)), test)
        lam = lam_fn(x[train], y[train])
        theta = ridge(x[train].reshape(-1, NUM_PARAMS), y[train].reshape(-1), lam)
        pred[test] = x[test] @ theta
        lams.append(lam)
    return pred, lams


def best_lambda(x, y, num_folds: int = 8, seed: int = 1) -> float:
    """The ``LAMBDAS`` entry of least grouped-CV squared error on (x, y)."""
    folds = grouped_folds(len(y), num_folds, seed)
    errors = [
        np.mean((cv_predictions(x, y, folds, lambda *_, lam=lam: lam)[0] - y) ** 2)
        for lam in LAMBDAS
    ]
    return LAMBDAS[int(np.argmin(errors))]


def fold_scores(pred, y, groups_per_fold) -> dict[str, list[float]]:
    """RMSE (eV) and R^2 of each test fold."""
    rmse, r2 = [], []
    for test in groups_per_fold:
        err, truth = (pred[test] - y[test]).ravel(), y[test].ravel()
        rmse.append(float(np.sqrt(np.mean(err**2))))
        r2.append(float(1 - np.sum(err**2) / np.sum((truth - truth.mean()) ** 2)))
    return {"rmse": rmse, "r2": r2}


def write_module(theta, provenance, path: Path = OUTPUT) -> None:
    """The fitted numbers as a small Python module (imported by ``KRABarrier.nbmota``)."""

    def table(values, names):
        body = "".join(f'    "{n}": {float(v)!r},\n' for n, v in zip(names, values, strict=True))
        return "{\n" + body + "}"

    prov = "".join(f"    {json.dumps(k)}: {json.dumps(v)},\n" for k, v in provenance.items())
    path.write_text(
        '"""KRA barrier parameters of equimolar NbMoTa (eV), written by experiments/fit_kra.py.\n\n'
        "Do not edit by hand: rerun the script. E0 per jumping species; V1 / V2 first- and\n"
        'second-shell pair energies (``KRABarrier``). Provenance: ``PROVENANCE``.\n"""\n\n'
        f"PROVENANCE = {{\n{prov}}}\n"
        f"E0 = {table(theta[:3], bcc.SPECIES[1:])}\n"
        f"V1 = {table(theta[3:9], PAIR_NAMES)}\n"
        f"V2 = {table(theta[9:], PAIR_NAMES)}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--folds", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="report only, write nothing")
    args = parser.parse_args()

    occupancies, vacancies, y = load_dft_barriers(args.data)
    x = design_matrix(occupancies, vacancies)
    folds = grouped_folds(len(y), args.folds, args.seed)
    pred, fold_lams = cv_predictions(x, y, folds, best_lambda)
    scores = fold_scores(pred, y, folds)
    pooled_rmse = float(np.sqrt(np.mean((pred - y) ** 2)))
    pooled_r2 = float(1 - np.sum((pred - y) ** 2) / np.sum((y - y.mean()) ** 2))
    lam = best_lambda(x, y)
    theta = ridge(x.reshape(-1, NUM_PARAMS), y.reshape(-1), lam)
    train_rmse = float(np.sqrt(np.mean((x @ theta - y) ** 2)))
    report = {
        "data": "UCICaoLab/First-principle-NNK DFT_training_data/NbMoTa (VASP PBE CI-NEB, MIT)",
        "num_barriers": int(y.size),
        "date": datetime.date.today().isoformat(),
        "cv": f"{args.folds}-fold grouped by vacancy, nested lambda, seed {args.seed}",
        "cv_rmse_ev": round(pooled_rmse, 4),
        "cv_r2": round(pooled_r2, 4),
        "cv_rmse_folds_mean_std": [
            round(np.mean(scores["rmse"]), 4),
            round(np.std(scores["rmse"]), 4),
        ],
        "cv_r2_folds_mean_std": [round(np.mean(scores["r2"]), 4), round(np.std(scores["r2"]), 4)],
        "fold_lambdas": sorted(set(fold_lams)),
        "lambda": lam,
        "train_rmse_ev": round(train_rmse, 4),
    }
    print(json.dumps(report))
    if not args.dry_run:
        write_module(theta, report)
        print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
