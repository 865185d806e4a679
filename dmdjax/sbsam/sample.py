r"""Sampling the inner region alone with a score (DESIGN.md §7).

Unadjusted overdamped Langevin dynamics driven by a score S(u) = ∇_u log ρ_e,

    u_{n+1} = u_n + h S(u_n) + √(2h) ξ_n,   ξ_n standard normal,

many independent chains at once (vmapped), with a burn-in and thinning. Its stationary law has
an O(h) bias: for a Gaussian with precision A the covariance is A⁻¹(I − hA/2)⁻¹, a relative
error of about hλ_max(A)/2 on the stiffest mode — choose h well below 1/λ_max (for the harmonic
oracle, λ_max of βS(F) is known). No sample is discarded: a chain that leaves the
finite numbers or the box ``max_displacement`` is a reported failure (:class:`SamplerDivergence`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class SamplerResult(NamedTuple):
    """``samples`` (chains, kept, m, d) Å; ``diverged`` (chains,) bool; ``step`` h (Å²)."""

    samples: jax.Array
    diverged: jax.Array
    step: float


class SamplerDivergence(RuntimeError):
    """Some chains left the finite numbers or ``max_displacement``; ``result`` holds every sample."""

    def __init__(self, message, result: SamplerResult):
        super().__init__(message)
        self.result = result


def langevin(score: Callable, key, initial, *, step: float, n_steps: int, burn_in: int = 0, thin: int = 1,
             max_displacement: float = 10.0) -> SamplerResult:
    """Run ``initial.shape[0]`` chains of overdamped Langevin with ``score`` (u (m, d) → (m, d), 1/Å).

    Arguments:
        key: a PRNG key. initial: (chains, m, d) starting displacements, Å.
        step: h, Å². n_steps: steps after ``burn_in``; every ``thin``-th is kept.
        max_displacement: Å; a chain with any |u| beyond it (or non-finite) has diverged.

    Raises:
        ValueError: a bad step, count or shape.
        SamplerDivergence: some chain diverged (its index is named; every sample is attached).
    """
    if not (step > 0 and jnp.isfinite(step)):
        raise ValueError(f"step must be finite and > 0 (Å²); got {step!r}")
    if n_steps < 1 or burn_in < 0 or thin < 1 or n_steps % thin:
        raise ValueError(f"need n_steps >= 1 divisible by thin >= 1 and burn_in >= 0; got {n_steps}, {thin}, {burn_in}")
    initial = jnp.asarray(initial)
    if initial.ndim != 3:
        raise ValueError(f"initial must have shape (chains, m, d); got {initial.shape}")
    noise_scale = jnp.sqrt(2.0 * step).astype(initial.dtype)

    def move(u, move_key):
        return u + step * score(u) + noise_scale * jax.random.normal(move_key, u.shape, u.dtype)

    def chain(u, chain_key):
        burn_key, run_key = jax.random.split(chain_key)

        def one(carry, step_key):
            position, bad = carry
            position = move(position, step_key)
            bad = bad | ~jnp.all(jnp.isfinite(position)) | (jnp.max(jnp.abs(position)) > max_displacement)
            return (position, bad), None

        def kept(carry, block_key):
            carry, _ = jax.lax.scan(one, carry, jax.random.split(block_key, thin))
            return carry, carry[0]

        carry, _ = jax.lax.scan(one, (u, jnp.asarray(False)), jax.random.split(burn_key, burn_in))
        (_, bad), samples = jax.lax.scan(kept, carry, jax.random.split(run_key, n_steps // thin))
        return samples, bad

    samples, diverged = jax.jit(jax.vmap(chain))(initial, jax.random.split(key, initial.shape[0]))
    result = SamplerResult(samples, diverged, float(step))
    if bool(jnp.any(diverged)):
        chains = jnp.flatnonzero(diverged).tolist()
        raise SamplerDivergence(f"Langevin chains {chains} diverged (non-finite or |u| > {max_displacement} Å) with "
                                f"step {step} Å²: reduce the step or check the score", result)
    return result
