"""Test-suite settings: strict dtype promotion for the library's tests.

Under ``jax_numpy_dtype_promotion = "strict"`` JAX refuses implicit promotions between array
dtypes (int8 + int32, float32 + float64...), so a silent upcast in the library (a float64 array
sneaking into float32 code, an int8 lattice promoted to int32 in a hot loop) is a test failure
instead of a slowdown or a precision change.
"""

import jax
import pytest


@pytest.fixture(autouse=True)
def strict_dtype_promotion():
    with jax.numpy_dtype_promotion("strict"):
        yield
