r"""First Piola–Kirchhoff stress from configurations (DESIGN.md §7). Units: eV/Å^d (2-D: eV/Å²).

Two estimators, both evaluated with the *true* potential on sampled positions — never the score
virial Σ_i S_i ⊗ X_i, whose mean is −n I whatever F is (Stein's identity).

* :func:`periodic_stress` — the full periodic system. Positions x = F s (s fixed scaled
  coordinates) in the box deformed by F, so

      P = (1/V₀) [⟨∂V(F s)/∂F⟩ − N k_BT F⁻ᵀ],

  with ∂V/∂F from autodiff of any energy ``energy(positions, deformation)``; this function
  returns the bracket's per-sample value over V₀ (average it, then it is P).
* :func:`bond_stress` — a local (Hardy-type, virial form) stress of a region from its pair
  bonds only, so its support is inside the region:

      P_I = (1/V_I) [Σ_{b ∈ I} φ'(|d_b|) d̂_b ⊗ F⁻¹ d_b − n_I k_BT F⁻ᵀ],

  d_b = x_j − x_i over the bonds b = (i, j) with both atoms in the region. Each bond carries the
  volume of 2/z atoms (z the coordination), so V_I = (2 n_b / z) V_atom and n_I = 2 n_b / z:
  in a homogeneous crystal its mean is the periodic P, term by term (the pair form of
  ∂V/∂F is Σ_b φ'(|d_b|) d̂_b ⊗ F⁻¹ d_b).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..units import thermal_energy


def periodic_stress(energy: Callable, positions: Float[Array, "n d"], deformation: Float[Array, "d d"],
                    temperature, reference_volume: float) -> Float[Array, "d d"]:
    """Per-sample (1/V₀)[∂V(F s)/∂F − N k_BT F⁻ᵀ] of one configuration of the full system.

    ``energy(positions, deformation)`` is V in eV of positions (n, d) Å in the box deformed by F
    (it must build its periodic box from ``deformation``); s = F⁻¹ x is held fixed.
    """
    deformation = jnp.asarray(deformation)
    scaled = positions @ jnp.linalg.inv(deformation).T
    derivative = jax.grad(lambda f: energy(scaled @ f.T, f))(deformation)
    kinetic = positions.shape[0] * thermal_energy(temperature) * jnp.linalg.inv(deformation).T
    return (derivative - kinetic) / reference_volume


def bond_stress(pair_derivative: Callable, bond_vectors: Float[Array, "b d"], deformation: Float[Array, "d d"],
                temperature, *, coordination: int, atom_volume: float, weights=None) -> Float[Array, "d d"]:
    """The local stress P_I of one configuration from its bond vectors d_b = x_j − x_i (b, d), Å.

    ``pair_derivative(r)`` is φ'(r) in eV/Å; ``atom_volume`` the reference volume per atom (Å^d).
    ``weights`` (b,), optional: each bond counts w_b times (virial, atoms and volume alike), e.g. to
    average a region's bonds over its lattice translates.
    """
    deformation = jnp.asarray(deformation)
    inverse = jnp.linalg.inv(deformation)
    length = jnp.linalg.norm(bond_vectors, axis=-1)
    force = pair_derivative(length) / length  # φ'(r)/r: φ' d̂ = (φ'/r) d
    if weights is not None:
        force = force * weights
    virial = jnp.einsum("b,bi,bj->ij", force, bond_vectors, bond_vectors @ inverse.T)
    bonds = bond_vectors.shape[0] if weights is None else jnp.sum(weights)
    atoms = 2.0 * bonds / coordination
    kinetic = atoms * thermal_energy(temperature) * inverse.T
    return (virial - kinetic) / (atoms * atom_volume)


def zero_variance_mean(values, scores, chains: int, positions=None, laplacian=None):
    """Mean of ``values`` (N, k) with zero-variance control variates and its standard error from
    ``chains`` equal contiguous blocks (one per chain).

    The controls have mean zero under any law whose score is ``scores`` (N, D) at the samples
    (Stein's identity E[∇ψ·S + Δψ] = 0): the scores themselves (ψ linear) and, with ``positions``
    (N, D, the coordinates the score is taken in), the quadratic ones S_i x_j + S_j x_i + 2δ_ij
    (ψ = x_i x_j, i ≤ j) — with those a quadratic observable of a Gaussian law has zero variance.
    ``laplacian`` (D, D) replaces 2δ_ij by Δ(x_i x_j) where the coordinates are constrained (e.g.
    measured from the centre of mass of N atoms: 2(δ_ij − 1/N) within a Cartesian component).
    The coefficients are the least-squares fit of the values on the centred controls.
    """
    values, controls = np.asarray(values), np.asarray(scores)
    if positions is not None:
        x = np.asarray(positions)
        if x.shape != controls.shape:
            raise ValueError(f"positions must have the shape of scores {controls.shape}; got {x.shape}")
        upper = np.triu_indices(x.shape[1])
        products = controls[:, :, None] * x[:, None, :]
        quadratic = (products + np.swapaxes(products, 1, 2))[:, upper[0], upper[1]]
        identity = 2.0 * np.eye(x.shape[1]) if laplacian is None else np.asarray(laplacian)
        quadratic += identity[upper[0], upper[1]]
        controls = np.concatenate([controls, quadratic], axis=1)
    centred = controls - controls.mean(axis=0)
    coefficients, *_ = np.linalg.lstsq(centred, values - values.mean(axis=0), rcond=None)
    corrected = values - controls @ coefficients
    per_chain = corrected.reshape(chains, -1, corrected.shape[-1]).mean(axis=1)
    return corrected.mean(axis=0), per_chain.std(axis=0, ddof=1) / np.sqrt(chains)


def taylor_controls(gradient, hessian, precision, centre, scores, positions, laplacian_shift=None, support=None):
    r"""Control variates designed from a Gaussian approximation of the law, mean zero under any law whose
    score is ``scores`` (Stein's identity E[∇ψ·S + Δψ] = 0 holds for every ψ): for each observable
    component k with gradient g_k and Hessian H_k at ``centre`` μ, and the approximate precision A,

        ψ_k = a_kᵀx,  a_k = A⁺g_k                (cancels the linear fluctuation g_kᵀ(x − μ)),
        ψ'_k = ½(x − μ)ᵀB_k(x − μ),  ½(B_kA + AB_k) = ½H_k   (cancels the quadratic one),

    so that for S = −A(x − μ) the observable's fluctuation is removed to second order; with the true
    score they stay exactly mean-zero whatever A is (A only sets how well they work). Few controls
    (2k), so a least-squares fit of their coefficients needs few samples
    (:func:`zero_variance_mean` with these as ``scores`` and no ``positions``).

    Arguments: gradient (k, d); hessian (k, d, d); precision (D, D) (symmetric, may be singular: its
    null space is ignored); centre (D,); scores, positions (N, D). ``support`` (d,) int: the coordinates
    (of the D) the observable depends on, where ``gradient`` and ``hessian`` are given (default: all, d =
    D); a_k and B_k still span every coordinate, so the Y-fluctuations the precision couples to the
    observable's coordinates are cancelled too. ``laplacian_shift`` (D, D): subtract from the identity in
    Δψ' = Σ_ij B_ij ∇x_i·∇x_j where the coordinates are constrained (e.g. 1/N within a Cartesian component
    for positions measured from the centre of mass of N atoms). Memory O(D² + k d²), one B_k at a time.
    Returns (N, 2k).
    """
    gradient, hessian = np.asarray(gradient, float), np.asarray(hessian, float)
    values, vectors = np.linalg.eigh(0.5 * (np.asarray(precision, float) + np.asarray(precision, float).T))
    support = np.arange(values.size) if support is None else np.asarray(support)
    if gradient.shape[-1] != support.size or hessian.shape[-2:] != (support.size, support.size):
        raise ValueError(f"gradient (k, {support.size}) and hessian (k, {support.size}, {support.size}) must match "
                         f"the support; got {gradient.shape} and {hessian.shape}")
    keep = values > 1e-8 * values.max()
    inverse = np.where(keep, 1.0 / np.where(keep, values, 1.0), 0.0)
    on_support = vectors[support]  # (d, D)
    linear = (gradient @ on_support) * inverse @ vectors.T  # a_k = A⁺ g_k, (k, D)
    pair = keep[:, None] & keep[None, :]
    denominator = np.where(pair, values[:, None] + values[None, :], 1.0)
    # the samples in the eigenbasis: the quadratic control is (Vᵀs)ᵀ C_k (Vᵀ(x − μ)), B_k = V C_k Vᵀ
    scores = np.asarray(scores, float)
    rotated_scores = scores @ vectors
    rotated_shift = (np.asarray(positions, float) - np.asarray(centre, float)) @ vectors
    rotated_laplacian = None if laplacian_shift is None else vectors.T @ np.asarray(laplacian_shift, float) @ vectors
    quadratic_controls = []
    for block in hessian:
        rotated = np.where(pair, on_support.T @ block @ on_support / denominator, 0.0)  # C_k
        trace = np.trace(rotated) - (0.0 if rotated_laplacian is None else np.sum(rotated * rotated_laplacian))
        quadratic_controls.append(np.sum((rotated_scores @ rotated) * rotated_shift, axis=1) + trace)
    return np.concatenate([scores @ linear.T, np.stack(quadratic_controls, axis=1)], axis=1)
