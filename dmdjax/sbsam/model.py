r"""The conditional score network S_θ(u_X, F, T) of SB-SAM (flax; DESIGN.md §7).

The network works in thermal units: displacements x = u/ℓ with ℓ = √(k_BT/κ₀) (κ₀ =
``stiffness_scale``, eV/Å²) and scores s·ℓ, so a harmonic inner region has the same
distribution of x at every temperature and the network only has to learn the anharmonic and
deformation dependence. It sees the flattened x (m·d), the strain F − I and log(T/T₀), and, for
denoising score matching, log σ (σ in thermal units).

:class:`ScoreMLP` is the baseline (a multilayer perceptron with SiLU activations); its output
is added to a learned linear term −A(F, T) x, A = LLᵀ built from a lower-triangular L predicted
from the condition, so the harmonic limit is represented exactly by the first term.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from ..units import BOLTZMANN_EV_PER_K


class ScoreMLP(nn.Module):
    """S(x | F, T[, σ]) in thermal units.

    Attributes:
        size: m·d, the number of inner coordinates.
        hidden: widths of the hidden layers.
        reference_temperature: T₀, K (the condition uses log(T/T₀)).
    """

    size: int
    hidden: Sequence[int] = (128, 128, 128)
    reference_temperature: float = 300.0

    @nn.compact
    def __call__(self, x, deformation, temperature, sigma=None):
        dtype = x.dtype
        condition = [jnp.reshape(deformation - jnp.eye(deformation.shape[-1], dtype=dtype), (-1,)),
                     jnp.log(jnp.asarray(temperature, dtype) / self.reference_temperature)[None]]
        if sigma is not None:
            condition.append(jnp.log(jnp.asarray(sigma, dtype))[None])
        condition = jnp.concatenate(condition)
        # linear part −A x with A = L Lᵀ (symmetric positive semi-definite), L from the condition
        lower = nn.Dense(self.size * self.size, kernel_init=nn.initializers.zeros, name="precision")(condition)
        lower = jnp.tril(jnp.reshape(lower, (self.size, self.size))) + jnp.eye(self.size, dtype=dtype)
        linear = -(lower @ (lower.T @ x))
        hidden = jnp.concatenate([x, condition])
        for width in self.hidden:
            hidden = nn.silu(nn.Dense(width)(hidden))
        return linear + nn.Dense(self.size, kernel_init=nn.initializers.zeros, name="correction")(hidden)


def thermal_length(temperature, stiffness_scale: float):
    """ℓ = √(k_BT/κ₀), Å."""
    return jnp.sqrt(BOLTZMANN_EV_PER_K * jnp.asarray(temperature) / stiffness_scale)


def score_in_angstrom(model: ScoreMLP, params, displacement, deformation, temperature, stiffness_scale: float,
                      sigma=None):
    """The learned score ∇_u log ρ_e in 1/Å for displacements u ``(m, d)`` Å (σ in Å for DSM)."""
    length = thermal_length(temperature, stiffness_scale).astype(displacement.dtype)
    x = jnp.reshape(displacement, (-1,)) / length
    scaled_sigma = None if sigma is None else sigma / length
    output = model.apply(params, x, deformation, temperature, scaled_sigma)
    return jnp.reshape(output / length, jnp.shape(displacement))
