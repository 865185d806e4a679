"""Gaussian pair averages by quadrature (DESIGN.md §2; measured errors in ``docs/quadrature.md``).

For x_i − x_j ~ N(R_ij, σ² I_d) with σ² = 1/(βk_i) + 1/(βk_j), the average of a radial
function g over the pair is approximated by ⟨g⟩ ≈ Σ_q f_q g(r_q):

* ``"gauss-hermite"`` (``nodes`` m, default 8): in 3-D the exact 1-D reduction
  ⟨g⟩ = (1/(R√π)) Σ_q w_q (R + α t_q) g(|R + α t_q|), α = √2 σ; in 1-D
  ⟨g⟩ = (1/√π) Σ_q w_q g(|R + α t_q|); in 2-D the m×m tensor rule.
* ``"third-degree"``: the 2d-point rule of the LAMMPS-based DMD codes, points at
  R ± √d σ e_k with weights 1/(2d), e_1 along R: two points at |R ± √d σ| and 2(d − 1)
  at √(R² + d σ²).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._precision import HIGHEST
from .potentials import Potential

QUADRATURE_RULES = ("gauss-hermite", "third-degree")
# Python floats (weakly typed) so that float32 inputs stay float32.
SQRT2 = float(np.sqrt(2.0))
SQRT_PI = float(np.sqrt(np.pi))


def quadrature_points(distance: Array, variance: Array, dim: int, rule: str = "gauss-hermite", nodes: int = 8):
    """Distances r_q and weights f_q with ⟨g(|R + ξ|)⟩ ≈ Σ_q f_q g(r_q), ξ ~ N(0, σ² I_d).

    Arguments:
        distance: R = |R_ij| (any shape), Å; must be > 0.
        variance: σ² (same shape), Å².
        dim: d, the spatial dimension (1, 2 or 3).
        rule, nodes: see the module docstring.

    Returns:
        ``(r_q, f_q)``, each of shape ``distance.shape + (Q,)``.
    """
    return points_at_sigma(distance, pair_sigma(variance), dim, rule, nodes)


def pair_sigma(variance: Array) -> Array:
    """σ = √v, 0 where v = 0 (a pair of clamped atoms, a padding slot), with a finite derivative
    everywhere (no √0 in the gradient)."""
    positive = variance > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, variance, 1.0)), 0.0)


def points_at_sigma(distance: Array, sigma: Array, dim: int, rule: str = "gauss-hermite", nodes: int = 8):
    """:func:`quadrature_points` at the pair standard deviation σ (Å) instead of the variance:
    smooth in σ, also at σ = 0 (the averaged tables differentiate the rule there)."""
    dtype = distance.dtype
    sigma = jnp.broadcast_to(sigma, distance.shape)[..., None]
    big_r = distance[..., None]
    if rule == "gauss-hermite":
        t, w = np.polynomial.hermite.hermgauss(nodes)
        t, w = jnp.asarray(t, dtype), jnp.asarray(w, dtype)
        alpha = SQRT2 * sigma
        if dim == 1:
            shifted = big_r + alpha * t
            return jnp.abs(shifted), jnp.broadcast_to(w / SQRT_PI, shifted.shape)
        if dim == 3:
            shifted = big_r + alpha * t
            return jnp.abs(shifted), w * shifted / (big_r * SQRT_PI)
        if dim == 2:
            along = (big_r + alpha * t)[..., :, None]
            across = (alpha * t)[..., None, :]
            r_q = jnp.sqrt(along**2 + across**2)
            f_q = jnp.broadcast_to((w[:, None] * w[None, :]) / np.pi, r_q.shape)
            shape = distance.shape + (nodes * nodes,)
            return r_q.reshape(shape), f_q.reshape(shape)
    elif rule == "third-degree":
        step = float(np.sqrt(dim)) * sigma
        along = [jnp.abs(big_r + step), jnp.abs(big_r - step)]
        across = [jnp.sqrt(big_r**2 + step**2)] * (2 * (dim - 1))
        r_q = jnp.concatenate(along + across, axis=-1)
        return r_q, jnp.full_like(r_q, 1.0 / (2 * dim))
    raise ValueError(f"quadrature must be one of {QUADRATURE_RULES} in 1-3 D; got {rule!r} in {dim}-D")


def reach_factor(dim: int, rule: str = "gauss-hermite", nodes: int = 8) -> float:
    """c with reach = c σ: how far (in pair standard deviations) the rule's points lie from R."""
    if rule == "gauss-hermite":
        return SQRT2 * float(np.max(np.abs(np.polynomial.hermite.hermgauss(nodes)[0])))
    if rule == "third-degree":
        return float(np.sqrt(dim))
    raise ValueError(f"quadrature must be one of {QUADRATURE_RULES}; got {rule!r}")


def gaussian_average(
    potential: Potential, distance: Array, variance: Array, dim: int, rule: str = "gauss-hermite", nodes: int = 8
) -> Array:
    """Gaussian averages of all radial functions, shape ``R.shape + (T, S, S)`` (see ``Potential.radial``)."""
    r_q, f_q = quadrature_points(distance, variance, dim, rule, nodes)
    return jnp.einsum("...q,...qtab->...tab", f_q, potential.radial(r_q), precision=HIGHEST)


def monte_carlo_average(potential: Potential, distance: float, variance: float, dim: int, n_samples: int, key):
    """Monte Carlo estimate of ⟨φ_ab⟩ and ⟨f_{b→a}⟩ at one pair distance, with standard errors.

    Samples ξ ~ N(0, σ² I_d) and averages every radial function at |R e_1 + ξ|; the
    reference against which the quadrature rules are measured (``docs/quadrature.md``).

    Returns:
        ``(mean, standard_error)``, each of shape ``(T, S, S)``.
    """
    dtype = jnp.result_type(float)
    xi = jnp.sqrt(jnp.asarray(variance, dtype)) * jax.random.normal(key, (n_samples, dim), dtype)
    r = jnp.linalg.norm(xi.at[:, 0].add(distance), axis=-1)
    values = potential.radial(r)
    return jnp.mean(values, axis=0), jnp.std(values, axis=0) / np.sqrt(n_samples)
