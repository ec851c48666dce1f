"""Behaviour versions of the code that produces cached stages.

Every cached stage's key holds the versions of the code it runs (``jmacro.pipelines.runner``
maps stage kinds to these names), so a change of behaviour rebuilds what depends on it instead
of silently reusing data built by the old code. Bump a version whenever the outputs of its code
change for the same inputs and key (a bug fix, a new key scheme, another default);
``tests/test_versions.py`` fails until you do: it fingerprints each part's outputs on fixed
inputs and compares them with the fingerprint recorded for the current version.
"""

VERSIONS: dict[str, int] = {
    # 2: the uniformized spin kernels draw other random words (two unrolled-Threefry words per
    # attempt, integer acceptance thresholds, null ticks for non-power-of-two sizes): same
    # law, other realisations. simulate and scale run the simulators, so their outputs moved
    # with it (their own code did not change).
    "systems": 2,  # microscopic simulators (jmacro.systems)
    "simulate": 2,  # trajectory / ensemble drivers
    "scale": 2,  # partial evolution, LocalRelax, upsampling (jmacro.scale)
    # closure autoencoders and latent SDEs (jmacro.models); 2: known="ising" is the lattice's
    # domain-wall density, each patch owning its right and lower bonds (was: patch-periodic).
    "models": 2,
    # pairs, losses, the fit loop (jmacro.training); 2: "ours" pairs add the change of every
    # bond touching the evolved patch (the known observables read through the lattice).
    "training": 2,
    "rollout": 1,  # Euler-Maruyama rollouts (jmacro.rollout)
    "metrics": 1,  # scores (jmacro.metrics)
    # the runner's own choices (jmacro.pipelines.runner): the autoencoder's validation split
    # (2: a random tenth, was the lowest indices of the subset) and the SDE keys (3: variant
    # seeds folded in, was key(seed + variant seed), which overlapped across master seeds).
    "runner": 3,
}
