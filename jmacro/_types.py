"""jaxtyping aliases shared across modules: shapes are the API of array code.

Dimension names bind within one call (jaxtyping checks them at run time under pytest), so an
alias is used only where two arguments really share a shape. Batch axes come first.
"""

from __future__ import annotations

from jaxtyping import Array, Float, Int, Int8, PRNGKeyArray, Shaped

State = Shaped[Array, "..."]
"""One configuration of any system (a spin lattice, a field, ...)."""

States = Shaped[Array, "batch ..."]
"""A batch of configurations, batch axis first."""

Spins2D = Shaped[Array, "H W"]
"""One 2D spin lattice: values -1/+1, int8 (simulators accept any integer or float dtype)."""

Field1D = Float[Array, "n species"]
"""One 1D field: n cells x species (e.g. prey u and predator v)."""

Occupancy3D = Int8[Array, "X Y Z"]
"""One 3D occupancy lattice (species index per site; the BCC alloy)."""

Time = Float[Array, ""]
"""An elapsed continuous time (float32 scalar)."""

PatchIndex = Int[Array, ""]
"""Index of a patch or window in a tiling (int32 scalar; may be traced)."""

Latent = Float[Array, " d"]
"""A macroscopic latent vector z."""

Condition = Float[Array, " c"]
"""A condition vector (physical parameters such as the temperature)."""

Key = PRNGKeyArray
"""A JAX PRNG key: always an explicit argument, never hidden state."""
