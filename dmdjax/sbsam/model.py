r"""The conditional score network S_θ(u_X, F, T) of SB-SAM (flax; DESIGN.md §7).

The network works in thermal units: displacements x = u/ℓ with ℓ = √(k_BT/κ₀) (κ₀ =
``stiffness_scale``, eV/Å²) and scores s·ℓ, so a harmonic inner region has the same
distribution of x at every temperature and the network only has to learn the anharmonic and
deformation dependence. It sees the flattened x (m·d), the strain F − I and log(T/T₀), and, for
denoising score matching, σ (thermal units; σ = 0 is the noise-free score).

:class:`ScoreMLP` is the baseline (a multilayer perceptron with SiLU activations); its output
is added to a learned linear term −A(F, T) x, A = LLᵀ built from a lower-triangular L that a
small network (``precision_hidden``, tanh) predicts from the condition, so the harmonic limit is
represented exactly by the first term and its dependence on F is smooth but not only linear.
:class:`PairScore` respects permutations of identical atoms (atoms carry their reference sites;
pair blocks and message passing instead of a flattened vector).
With noise σ the linear term is the σ-smoothed Gaussian's score (:func:`gaussian_score`), so
denoising at σ > 0 trains the same noise-free precision that is used at σ = 0.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..units import BOLTZMANN_EV_PER_K


class ScoreMLP(nn.Module):
    """S(x | F, T[, σ]) in thermal units.

    Attributes:
        size: m·d, the number of inner coordinates.
        hidden: widths of the hidden layers of the correction.
        precision_hidden: widths of the hidden layers that map the condition to L.
        reference_temperature: T₀, K (the condition uses log(T/T₀)).
    """

    size: int
    hidden: Sequence[int] = (128, 128, 128)
    precision_hidden: Sequence[int] = (64,)
    reference_temperature: float = 300.0

    @nn.compact
    def __call__(self, x, deformation, temperature, sigma=None):
        dtype = x.dtype
        condition = condition_features(deformation, temperature, self.reference_temperature, dtype)
        lower = precision_factor(condition, self.size, self.precision_hidden)
        inputs = [x, condition] + ([] if sigma is None else [jnp.asarray(sigma, dtype)[None]])
        hidden = jnp.concatenate(inputs)
        for width in self.hidden:
            hidden = nn.silu(nn.Dense(width)(hidden))
        correction = nn.Dense(self.size, kernel_init=nn.initializers.zeros, name="correction")(hidden)
        return gaussian_score(lower, x, sigma) + correction


def condition_features(deformation, temperature, reference_temperature: float, dtype):
    """The condition the networks see: the strain F − I flattened and log(T/T₀), ``(d² + 1,)``."""
    strain = jnp.reshape(deformation - jnp.eye(deformation.shape[-1], dtype=dtype), (-1,))
    return jnp.concatenate([strain, jnp.log(jnp.asarray(temperature, dtype) / reference_temperature)[None]])


def precision_factor(condition, size: int, hidden: Sequence[int]):
    """L (size, size), lower triangular, from the condition by a tanh network (inside a compact
    module); starts at the identity."""
    features = condition
    for width in hidden:
        features = nn.tanh(nn.Dense(width)(features))
    lower = nn.Dense(size * size, kernel_init=nn.initializers.zeros, name="precision")(features)
    return jnp.tril(jnp.reshape(lower, (size, size))) + jnp.eye(size, dtype=condition.dtype)


def linear_score(precision, x, sigma=None):
    """−A x, or with noise σ the score of the Gaussian smoothed by it, −(A⁻¹ + σ²I)⁻¹ x =
    −A (I + σ²A)⁻¹ x, so a model trained by denoising at σ > 0 carries its noise-free precision
    (σ = 0) in A."""
    if sigma is not None:
        x = jnp.linalg.solve(jnp.eye(x.shape[0], dtype=x.dtype) + sigma**2 * precision, x)
    return -(precision @ x)


def gaussian_score(lower, x, sigma=None):
    """:func:`linear_score` for A = L Lᵀ."""
    return linear_score(lower @ lower.T, x, sigma)


class PairScore(nn.Module):
    """S(x | F, T[, σ]) in thermal units, equivariant under permutations of the inner atoms.

    Each atom carries its reference site ξ_i (``sites``, (m, d) Å from the region's centre), so
    relabelling the atoms (their x_i and ξ_i together) relabels the output the same way. The
    linear part is −A x with 2×2 blocks A_ij = ½(B(ξ_i, ξ_j) + B(ξ_j, ξ_i)ᵀ), B one network of the
    pair geometry and the condition (identity on the diagonal at start); the correction is one
    round of message passing, h_i = φ(ξ_i, x_i, c), m_i = Σ_j ψ(h_i, h_j, ξ_j − ξ_i, x_j − x_i),
    S_i += χ(h_i, m_i). With noise σ the linear part is smoothed as in :func:`linear_score`.

    Attributes:
        sites: reference sites, a tuple of m tuples of d floats (static, hashable).
        hidden: widths of φ, ψ and χ. pair_hidden: widths of B.
        reference_temperature: T₀, K.
    """

    sites: tuple
    hidden: Sequence[int] = (64, 64)
    pair_hidden: Sequence[int] = (64, 64)
    reference_temperature: float = 300.0

    @nn.compact
    def __call__(self, x, deformation, temperature, sigma=None):
        dtype = x.dtype
        sites = jnp.asarray(self.sites, dtype)
        m, d = sites.shape
        scale = jnp.max(jnp.linalg.norm(sites, axis=-1)) + 1.0
        sites = sites / scale
        condition = condition_features(deformation, temperature, self.reference_temperature, dtype)
        # linear part: pair blocks from the pair geometry
        first, second = jnp.broadcast_to(sites[:, None], (m, m, d)), jnp.broadcast_to(sites[None], (m, m, d))
        separation = second - first
        pair = jnp.concatenate([first, second, separation, jnp.linalg.norm(separation, axis=-1, keepdims=True),
                                jnp.broadcast_to(condition, (m, m, condition.size))], axis=-1)
        for width in self.pair_hidden:
            pair = nn.tanh(nn.Dense(width)(pair))
        blocks = nn.Dense(d * d, kernel_init=nn.initializers.zeros, name="blocks")(pair).reshape(m, m, d, d)
        blocks = 0.5 * (blocks + blocks.transpose(1, 0, 3, 2)) + jnp.eye(m, dtype=dtype)[:, :, None, None] * jnp.eye(
            d, dtype=dtype)
        linear = linear_score(blocks.transpose(0, 2, 1, 3).reshape(m * d, m * d), x, sigma)
        # correction: one round of message passing
        atoms = jnp.reshape(x, (m, d))
        extra = [] if sigma is None else [jnp.full((m, 1), sigma, dtype)]
        node = jnp.concatenate([sites, atoms, jnp.broadcast_to(condition, (m, condition.size))] + extra, axis=-1)
        for width in self.hidden:
            node = nn.silu(nn.Dense(width)(node))
        width = node.shape[-1]
        edge = jnp.concatenate([jnp.broadcast_to(node[:, None], (m, m, width)),
                                jnp.broadcast_to(node[None], (m, m, width)), separation,
                                atoms[None] - atoms[:, None]], axis=-1)
        for size in self.hidden:
            edge = nn.silu(nn.Dense(size)(edge))
        message = jnp.sum(edge, axis=1)
        out = jnp.concatenate([node, message], axis=-1)
        for size in self.hidden:
            out = nn.silu(nn.Dense(size)(out))
        correction = nn.Dense(d, kernel_init=nn.initializers.zeros, name="correction")(out)
        return linear + jnp.reshape(correction, (-1,))


class BoundaryCorrection(nn.Module):
    """A learned correction to a known reference score that acts on the boundary atoms only (thermal units).

    SB-SAM of a large inner region as Δ-learning on a reference score that already treats the inner
    bonds exactly (:mod:`~dmdjax.sbsam.crystal`: the clamped or the mean-field score):
    S(x | F, T) = S_ref(x | F, T) + C(x_b | F, T), where the exact C = E[−β∇V_XY | X] − (the
    reference's X–Y forces) depends on the boundary coordinates x_b alone. C = b + M x_b + g(x_b),
    with the bias b and the symmetric matrix M from a tanh network of the condition, and g an MLP of
    (x_b, condition); all start at zero, so the untrained model is the reference. With ``bound`` β
    the correction is saturated, C → β tanh(C/β) per coordinate: where the network extrapolates it
    cannot push harder than β (below the bonds' largest restoring force, it cannot tear an atom
    out). With ``symmetries`` — point-group elements g of the region with their atom permutations
    π (:attr:`~dmdjax.sbsam.lattice.MorseLattice.inner_symmetries`) — the correction is averaged
    over the group, C(x | F) = (1/|G|) Σ_g gᵀ C_raw(g·x | gFgᵀ)_π, so it is exactly equivariant as
    the true score is (a diagonal F, for instance, then gives no spurious shear stress). The output
    has the full size (zero off the boundary).

    Attributes:
        size: m·d. boundary: the flattened coordinate indices of the boundary atoms (a tuple).
        hidden: widths of g. precision_hidden: widths of the condition network.
        reference_temperature: T₀, K. bound: the saturation β of each output (thermal units; None: linear).
        symmetries: ((g as nested tuples, π as a tuple), ...), the identity included; () for none.
    """

    size: int
    boundary: tuple
    hidden: Sequence[int] = (64, 64)
    precision_hidden: Sequence[int] = (64,)
    reference_temperature: float = 300.0
    bound: float | None = None
    symmetries: tuple = ()

    @nn.compact
    def __call__(self, x, deformation, temperature, sigma=None):
        dtype = x.dtype
        index = jnp.asarray(self.boundary)
        n = len(self.boundary)
        deformation = jnp.asarray(deformation, dtype)
        if self.symmetries:  # every image g·x at the condition g F gᵀ, in one batch
            images = [(jnp.asarray(g, dtype), np.asarray(permutation)) for g, permutation in self.symmetries]
            xs = jnp.stack([_act(g, permutation, x) for g, permutation in images])
            deformations = jnp.stack([g @ deformation @ g.T for g, _ in images])
        else:
            xs, deformations = x[None], deformation[None]
        condition = jax.vmap(lambda f: condition_features(f, temperature, self.reference_temperature, dtype))(
            deformations)
        local = xs[:, index]
        features = condition
        for width in self.precision_hidden:
            features = nn.tanh(nn.Dense(width)(features))
        bias = nn.Dense(n, kernel_init=nn.initializers.zeros, name="bias")(features)
        matrix = nn.Dense(n * n, kernel_init=nn.initializers.zeros, name="softening")(features).reshape(-1, n, n)
        hidden = jnp.concatenate([local, condition], axis=-1)
        for width in self.hidden:
            hidden = nn.silu(nn.Dense(width)(hidden))
        nonlinear = nn.Dense(n, kernel_init=nn.initializers.zeros, name="correction")(hidden)
        correction = bias + jnp.einsum("gij,gj->gi", 0.5 * (matrix + jnp.swapaxes(matrix, 1, 2)), local) + nonlinear
        if self.bound is not None:
            correction = self.bound * jnp.tanh(correction / self.bound)
        full = jnp.zeros((correction.shape[0], self.size), dtype).at[:, index].set(correction)
        if not self.symmetries:
            return full[0]
        return jnp.mean(jnp.stack([_pull(g, permutation, c) for (g, permutation), c in zip(images, full)]), axis=0)


def _act(matrix, permutation, vector):
    """g·x: atom π(i) gets g x_i (``vector`` flattened (atom, axis))."""
    v = jnp.reshape(vector, (len(permutation), -1))
    return jnp.zeros_like(v).at[permutation].set(v @ matrix.T).reshape(-1)


def _pull(matrix, permutation, vector):
    """The inverse action on a covariant vector field value: atom i gets gᵀ v_π(i)."""
    v = jnp.reshape(vector, (len(permutation), -1))
    return (v[permutation] @ matrix).reshape(-1)


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
