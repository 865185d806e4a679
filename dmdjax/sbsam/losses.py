r"""Score-matching losses of SB-SAM, per sample (vmap and mean them over a batch; DESIGN.md §7).

``score`` is a function of one flattened sample x ``(D,)`` returning S(x) ``(D,)`` (condition on
F, T by closing over them). Each loss has the true score as its minimiser:

* :func:`implicit_score_matching` — ‖S‖² + 2 ∇·S with the exact divergence (D Jacobian-vector
  products: for small inner regions). (The seed's eqs. (4), (7) print an outer square: a typo.)
* :func:`hutchinson_score_matching` — the same with ∇·S ≈ vᵀ(∂S/∂x)v, v Rademacher: one
  Jacobian-vector product.
* :func:`sliced_score_matching` — variance-reduced sliced score matching (Song et al. 2019):
  ‖S‖² + 2 vᵀ(∂S/∂x)v with Gaussian v.
* :func:`denoising_score_matching` — multi-noise DSM: x̃ = x + σz, weight σ², target −z/σ; the
  score takes σ as well (``score(x, sigma)``) and is the score of the σ-smoothed density.
* :func:`force_matching` — ‖S(X) − f‖² against f = −β∇_X V(X, Y) of the full-system sample:
  E[f | X] is the score, so this is the lowest-variance loss when forces are at hand.

Up to constants independent of S, each equals E‖S − ∇ log ρ‖² (DSM: at each σ, for the
smoothed density), which is how the tests check them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def implicit_score_matching(score, x):
    """‖S(x)‖² + 2 tr ∂S/∂x (exact divergence)."""
    value, jacobian = jax.vmap(lambda v: jax.jvp(score, (x,), (v,)), out_axes=(None, 0))(
        jnp.eye(x.shape[0], dtype=x.dtype))
    return jnp.sum(value**2) + 2.0 * jnp.trace(jacobian)


def _projected(score, x, direction):
    value, derivative = jax.jvp(score, (x,), (direction,))
    return jnp.sum(value**2) + 2.0 * jnp.dot(direction, derivative)


def hutchinson_score_matching(score, x, key):
    """‖S(x)‖² + 2 vᵀ(∂S/∂x)v, v Rademacher (an unbiased estimate of the implicit loss)."""
    direction = jax.random.rademacher(key, x.shape, x.dtype)
    return _projected(score, x, direction)


def sliced_score_matching(score, x, key):
    """Variance-reduced sliced score matching: ‖S(x)‖² + 2 vᵀ(∂S/∂x)v, v standard normal."""
    direction = jax.random.normal(key, x.shape, x.dtype)
    return _projected(score, x, direction)


def denoising_score_matching(score, x, key, sigmas):
    """σ² ‖S(x + σz, σ) + z/σ‖², σ drawn uniformly from ``sigmas`` (a 1-D array), z standard normal."""
    choice_key, noise_key = jax.random.split(key)
    sigma = jax.random.choice(choice_key, jnp.asarray(sigmas, x.dtype))
    noise = jax.random.normal(noise_key, x.shape, x.dtype)
    return sigma**2 * jnp.sum((score(x + sigma * noise, sigma) + noise / sigma) ** 2)


def force_matching(score, x, force_target):
    """‖S(x) − f‖², f = −β∇_X V(X, Y) of the same full-system sample."""
    return jnp.sum((score(x) - force_target) ** 2)
