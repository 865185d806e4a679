r"""Sampling the inner region alone with a score (DESIGN.md §7).

Overdamped Langevin dynamics driven by a score S(u) = ∇_u log ρ_e, discretised by the
Leimkuhler–Matthews scheme (the high-friction limit of BAOAB),

    u_{n+1} = u_n + h S(u_n) + √(h/2) (ξ_n + ξ_{n+1}),   ξ_n standard normal,

many independent chains at once (vmapped, each with its own condition if wanted), with a
burn-in and thinning. For a Gaussian target (a linear score, precision A) its stationary
covariance is A⁻¹ *exactly* at every stable step h < 2/λ_max(A) (Euler–Maruyama's is
A⁻¹(I − hA/2)⁻¹); in general the bias of its invariant measure is O(h²). For a model trained
by denoising score matching, :func:`langevin` anneals: the burn-in runs through the noise levels
from the largest down with the score S(u, σ), and the kept samples use the smallest.

No sample is discarded: a chain that leaves the finite numbers or the box
``max_displacement`` is a reported failure (:class:`SamplerDivergence`, every sample attached).
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class SamplerResult(NamedTuple):
    """``samples`` (chains, kept, m, d) Å; ``diverged`` (chains,) bool; ``step`` h (Å²); ``seconds``
    the sampling wall time (compilation excluded)."""

    samples: jax.Array
    diverged: jax.Array
    step: float
    seconds: float = float("nan")


class SamplerDivergence(RuntimeError):
    """Some chains left the finite numbers or ``max_displacement``; ``result`` holds every sample."""

    def __init__(self, message, result: SamplerResult):
        super().__init__(message)
        self.result = result


def langevin(score: Callable, key, initial, *, step: float, n_steps: int, burn_in: int = 0, thin: int = 1,
             condition=None, noise_levels=None, max_displacement: float = 10.0) -> SamplerResult:
    """Run ``initial.shape[0]`` chains of overdamped Langevin (Leimkuhler–Matthews) with ``score``.

    Units are the caller's: Å below, but any consistent unit works (e.g. the thermal units of
    :mod:`~dmdjax.sbsam.model`, where one step suits every temperature).

    Arguments:
        score: u (m, d) Å → S (m, d) 1/Å; called ``score(u, condition)`` when ``condition`` is
            given, with a last argument σ (Å) when ``noise_levels`` is given.
        key: a PRNG key. initial: (chains, m, d) starting displacements, Å.
        step: h, Å². n_steps: steps after ``burn_in``; every ``thin``-th is kept.
        condition: optional pytree with a leading axis of length ``chains`` (e.g. (F, T) per chain).
        noise_levels: optional σ's (Å, or the score's own unit) for annealing: ``burn_in`` steps
            at each, largest first; the kept steps use the smallest (0 allowed: the noise-free score).
        max_displacement: Å; a chain with any |u| beyond it (or non-finite) has diverged.

    Raises:
        ValueError: a bad step, count, shape or noise level.
        SamplerDivergence: some chain diverged (its index is named; every sample is attached).
    """
    if not (np.isfinite(step) and step > 0):
        raise ValueError(f"step must be finite and > 0 (Å²); got {step!r}")
    if n_steps < 1 or burn_in < 0 or thin < 1 or n_steps % thin:
        raise ValueError(f"need n_steps >= 1 divisible by thin >= 1 and burn_in >= 0; got {n_steps}, {thin}, {burn_in}")
    initial = jnp.asarray(initial)
    if initial.ndim != 3:
        raise ValueError(f"initial must have shape (chains, m, d); got {initial.shape}")
    if noise_levels is not None:
        levels = np.sort(np.asarray(noise_levels, dtype=float).reshape(-1))[::-1]
        if levels.size == 0 or not np.all(np.isfinite(levels) & (levels >= 0)):
            raise ValueError(f"noise_levels must be finite and >= 0 (Å); got {noise_levels!r}")
    else:
        levels = None
    chains = initial.shape[0]
    if condition is not None:
        sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree_util.tree_leaves(condition)}
        if sizes != {chains}:
            raise ValueError(f"every leaf of condition needs a leading axis of length {chains} (one per chain)")
    half_step = jnp.sqrt(0.5 * step).astype(initial.dtype)

    def drift(u, chain_condition, sigma):
        arguments = (u,) + (() if condition is None else (chain_condition,)) + (() if levels is None else (sigma,))
        return score(*arguments)

    def run(carry, keys, chain_condition, sigma):
        def one(state, step_key):
            position, noise, bad = state
            fresh = jax.random.normal(step_key, position.shape, position.dtype)
            position = position + step * drift(position, chain_condition, sigma) + half_step * (noise + fresh)
            bad = bad | ~jnp.all(jnp.isfinite(position)) | (jnp.max(jnp.abs(position)) > max_displacement)
            return (position, fresh, bad), None

        return jax.lax.scan(one, carry, keys)[0]

    def chain(u, chain_condition, chain_key):
        start_key, burn_key, run_key = jax.random.split(chain_key, 3)
        carry = (u, jax.random.normal(start_key, u.shape, u.dtype), jnp.asarray(False))
        sigmas = [None] if levels is None else [jnp.asarray(s, u.dtype) for s in levels]
        for sigma, level_key in zip(sigmas, jax.random.split(burn_key, len(sigmas))):
            carry = run(carry, jax.random.split(level_key, burn_in), chain_condition, sigma)

        def kept(state, block_key):
            state = run(state, jax.random.split(block_key, thin), chain_condition, sigmas[-1])
            return state, state[0]

        (_, _, bad), samples = jax.lax.scan(kept, carry, jax.random.split(run_key, n_steps // thin))
        return samples, bad

    keys = jax.random.split(key, chains)
    compiled = jax.jit(jax.vmap(chain)).lower(initial, condition, keys).compile()
    start = time.perf_counter()
    samples, diverged = jax.block_until_ready(compiled(initial, condition, keys))
    result = SamplerResult(samples, diverged, float(step), time.perf_counter() - start)
    if bool(jnp.any(diverged)):
        bad_chains = jnp.flatnonzero(diverged).tolist()
        raise SamplerDivergence(f"Langevin chains {bad_chains} diverged (non-finite or |u| > {max_displacement} Å) "
                                f"with step {step} Å²: reduce the step or check the score", result)
    return result
