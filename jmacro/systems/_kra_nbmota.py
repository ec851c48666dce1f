"""KRA barrier parameters of equimolar NbMoTa (eV), written by experiments/fit_kra.py.

Do not edit by hand: rerun the script. E0 per jumping species; V1 / V2 first- and
second-shell pair energies (``KRABarrier``). Provenance: ``PROVENANCE``.
"""

PROVENANCE = {
    "data": "UCICaoLab/First-principle-NNK DFT_training_data/NbMoTa (VASP PBE CI-NEB, MIT)",
    "num_barriers": 1024,
    "date": "2026-11-30",
    "cv": "8-fold grouped by vacancy, nested lambda, seed 0",
    "cv_rmse_ev": 0.1496,
    "cv_r2": 0.7356,
    "cv_rmse_folds_mean_std": [0.1494, 0.0066],
    "cv_r2_folds_mean_std": [0.7216, 0.0581],
    "fold_lambdas": [3.0, 10.0],
    "lambda": 3.0,
    "train_rmse_ev": 0.1468,
}
E0 = {
    "Nb": 0.9539901227281173,
    "Mo": 1.2908536459818227,
    "Ta": 1.103816573945571,
}
V1 = {
    "NbNb": 0.11540019934112285,
    "NbMo": -0.06847985536731047,
    "NbTa": 0.11516989885765055,
    "MoMo": -0.18720617146221544,
    "MoTa": -0.0761075748993974,
    "TaTa": 0.10122350353013523,
}
V2 = {
    "NbNb": -0.06504952211694406,
    "NbMo": 0.048224522020129425,
    "NbTa": -0.05525039700653192,
    "MoMo": 0.12792166596608023,
    "MoTa": 0.05406018436605867,
    "TaTa": -0.10990645322879544,
}
