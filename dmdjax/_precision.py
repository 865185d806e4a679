"""Numerical precision of contractions.

On GPUs, XLA runs float32 dot products in TF32 by default (10-bit mantissa), which puts
relative errors of ~1e-4 into energies. Every contraction and matrix product in dmdjax
(einsum, matmul; `@` would use the default) asks for full precision; the contractions are small and memory-bound, so this costs little.
"""

import jax

HIGHEST = jax.lax.Precision.HIGHEST
