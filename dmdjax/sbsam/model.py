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

from ..units import thermal_energy


class ScoreMLP(nn.Module):
    """S(x | F, T[, σ]) in thermal units.

    With ``symmetries`` (point-group elements of the region with their atom permutations,
    :attr:`~dmdjax.sbsam.lattice.MorseLattice.inner_symmetries`) the output is the group average
    (1/|G|) Σ_g M_gᵀ S_raw(M_g x | gFgᵀ, T) (:func:`symmetry_actions`), exactly equivariant as the
    true score is; the parameters are the same as without.

    Attributes:
        size: m·d, the number of inner coordinates.
        hidden: widths of the hidden layers of the correction.
        precision_hidden: widths of the hidden layers that map the condition to L.
        reference_temperature: T₀, K (the condition uses log(T/T₀)).
        symmetries: ((g as nested tuples, π as a tuple), ...), the identity included; () for none.
        correction: False drops the correction MLP: the conditional Gaussian score −A(F, T)x, a
            gradient field by construction (the MLP correction is not one: where it fits noise
            with a non-symmetric linear part, Langevin's stationary law is not the law the score
            matching estimated).
    """

    size: int
    hidden: Sequence[int] = (128, 128, 128)
    precision_hidden: Sequence[int] = (64,)
    reference_temperature: float = 300.0
    symmetries: tuple = ()
    correction: bool = True

    @nn.compact
    def __call__(self, x, deformation, temperature, sigma=None):
        dtype = x.dtype
        xs, condition, actions = _images(self.symmetries, x, deformation, temperature, self.reference_temperature)
        lower = precision_factor(condition, self.size, self.precision_hidden)
        if not self.correction:
            return _average_images(actions, gaussian_score(lower, xs, sigma))
        extra = [] if sigma is None else [jnp.full((len(xs), 1), sigma, dtype)]
        hidden = jnp.concatenate([xs, condition] + extra, axis=-1)
        for width in self.hidden:
            hidden = nn.silu(nn.Dense(width)(hidden))
        correction = nn.Dense(self.size, kernel_init=nn.initializers.zeros, name="correction")(hidden)
        return _average_images(actions, gaussian_score(lower, xs, sigma) + correction)


def condition_features(deformation, temperature, reference_temperature: float, dtype):
    """The condition the networks see: the strain F − I flattened and log(T/T₀), ``(d² + 1,)``."""
    strain = jnp.reshape(deformation - jnp.eye(deformation.shape[-1], dtype=dtype), (-1,))
    return jnp.concatenate([strain, jnp.log(jnp.asarray(temperature, dtype) / reference_temperature)[None]])


def precision_factor(condition, size: int, hidden: Sequence[int]):
    """L (..., size, size), lower triangular, from the condition (..., c) by a tanh network
    (inside a compact module); starts at the identity."""
    features = condition
    for width in hidden:
        features = nn.tanh(nn.Dense(width)(features))
    lower = nn.Dense(size * size, kernel_init=nn.initializers.zeros, name="precision")(features)
    return jnp.tril(jnp.reshape(lower, lower.shape[:-1] + (size, size))) + jnp.eye(size, dtype=condition.dtype)


def linear_score(precision, x, sigma=None):
    """−A x, or with noise σ the score of the Gaussian smoothed by it, −(A⁻¹ + σ²I)⁻¹ x =
    −A (I + σ²A)⁻¹ x, so a model trained by denoising at σ > 0 carries its noise-free precision
    (σ = 0) in A. A (..., D, D), x (..., D)."""
    if sigma is not None:
        identity = jnp.eye(x.shape[-1], dtype=x.dtype)
        x = jnp.linalg.solve(identity + sigma**2 * precision, x[..., None])[..., 0]
    return -jnp.einsum("...ij,...j->...i", precision, x)


def gaussian_score(lower, x, sigma=None):
    """:func:`linear_score` for A = L Lᵀ."""
    return linear_score(lower @ jnp.swapaxes(lower, -1, -2), x, sigma)


def symmetry_actions(symmetries, dtype=jnp.float32):
    """The matrices M_g (G, m·d, m·d) of the point-group elements ``((g, π), ...)`` on flattened
    displacements (atom-major): (M_g x)_π(i) = g x_i. For a covariant field (a score) the inverse
    action is M_gᵀ."""
    matrices = []
    for g, permutation in symmetries:
        g = np.asarray(g, float)
        m, d = len(permutation), g.shape[0]
        matrix = np.zeros((m * d, m * d))
        for i, image in enumerate(permutation):
            matrix[image * d:(image + 1) * d, i * d:(i + 1) * d] = g
        matrices.append(matrix)
    return jnp.asarray(np.stack(matrices), dtype)


def _images(symmetries, x, deformation, temperature, reference_temperature: float):
    """(M_g x, the condition features of (gFgᵀ, T)) for every group element, stacked, and the
    matrices M_g (None without symmetries)."""
    deformation = jnp.asarray(deformation, x.dtype)
    if not symmetries:
        xs, deformations, actions = x[None], deformation[None], None
    else:
        actions = symmetry_actions(symmetries, x.dtype)
        rotations = jnp.asarray(np.stack([np.asarray(g, float) for g, _ in symmetries]), x.dtype)
        xs, deformations = actions @ x, rotations @ deformation @ jnp.swapaxes(rotations, -1, -2)
    features = jax.vmap(lambda f: condition_features(f, temperature, reference_temperature, x.dtype))(deformations)
    return xs, features, actions


def _average_images(actions, outputs):
    """(1/|G|) Σ_g M_gᵀ out_g (``outputs`` (G, D)); the single output without symmetries."""
    if actions is None:
        return outputs[0]
    return jnp.einsum("gji,gj->i", actions, outputs) / outputs.shape[0]


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
    over the group, C(x | F) = (1/|G|) Σ_g M_gᵀ C_raw(M_g x | gFgᵀ), so it is exactly equivariant as
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
        xs, condition, actions = _images(self.symmetries, x, deformation, temperature,  # every image, one batch
                                         self.reference_temperature)
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
        return _average_images(actions, full)


def thermal_length(temperature, stiffness_scale: float):
    """ℓ = √(k_BT/κ₀), Å."""
    return jnp.sqrt(thermal_energy(temperature) / stiffness_scale)


def score_in_angstrom(model: ScoreMLP, params, displacement, deformation, temperature, stiffness_scale: float,
                      sigma=None):
    """The learned score ∇_u log ρ_e in 1/Å for displacements u ``(m, d)`` Å (σ in Å for DSM)."""
    length = thermal_length(temperature, stiffness_scale).astype(displacement.dtype)
    x = jnp.reshape(displacement, (-1,)) / length
    scaled_sigma = None if sigma is None else sigma / length
    output = model.apply(params, x, deformation, temperature, scaled_sigma)
    return jnp.reshape(output / length, jnp.shape(displacement))


class CubicCorrection(nn.Module):
    """A bounded, point-group-equivariant correction to a reference score in 3-D (thermal units).

    C(x | F, T) = β tanh((b + B x)/β) per coordinate, with a bias b (m·3) and per-atom 3 × 3 blocks
    B (m, 3, 3) from a tanh network of the condition (strain F − I, log T/T₀), both zero at
    initialisation (the untrained model is the reference), each averaged over the point group of
    the region — ``symmetries`` ((g, π), ...) with g(ξ_i − c) = ξ_π(i) − c:

        b̄_i(F) = (1/|G|) Σ_g gᵀ b_π(i)(gFgᵀ),   B̄_i(F) = (1/|G|) Σ_g gᵀ B_π(i)(gFgᵀ) g.

    With g a signed permutation (the cubic group Oh), the per-coordinate tanh commutes with g, so
    C(Gx | gFgᵀ) = G C(x | F) exactly, (Gx)_π(i) = g x_i. b̄ and B̄ depend on the condition only:
    :meth:`coefficients` evaluates them once per condition, :func:`cubic_correction` applies them
    (a sampler pays one tanh per coordinate per step).

    With ``bias=False`` b̄ ≡ 0: the correction is odd about x = 0 and cannot move the sampled mean at
    first order (the caller centres x at the reference's mean and sets the mean by other means).

    Attributes:
        atoms: m. symmetries: as above (identity included). hidden: widths of the condition network.
        bound: β, thermal units. reference_temperature: T₀, K. bias: whether b̄ is learned.
    """

    atoms: int
    symmetries: tuple
    hidden: Sequence[int] = (64, 64)
    bound: float = 2.0
    reference_temperature: float = 300.0
    bias: bool = True

    @nn.compact
    def __call__(self, deformation, temperature):
        """``(b̄ (m, 3), B̄ (m, 3, 3))`` at the condition (F (3, 3), T)."""
        dtype = jnp.asarray(deformation).dtype
        rotations = jnp.asarray(np.stack([np.asarray(g, float) for g, _ in self.symmetries]), dtype)
        permutations = np.stack([np.asarray(p) for _, p in self.symmetries])
        images = rotations @ jnp.asarray(deformation, dtype) @ jnp.swapaxes(rotations, 1, 2)
        features = jax.vmap(lambda f: condition_features(f, temperature, self.reference_temperature, dtype))(images)
        for width in self.hidden:
            features = nn.tanh(nn.Dense(width, dtype=dtype)(features))
        if self.bias:
            bias = nn.Dense(3 * self.atoms, kernel_init=nn.initializers.zeros, dtype=dtype, name="bias")(features)
        else:
            bias = jnp.zeros((features.shape[0], 3 * self.atoms), dtype)
        blocks = nn.Dense(9 * self.atoms, kernel_init=nn.initializers.zeros, dtype=dtype, name="blocks")(features)
        bias = bias.reshape(-1, self.atoms, 3)
        blocks = blocks.reshape(-1, self.atoms, 3, 3)
        group = np.arange(len(self.symmetries))[:, None]
        bias = jnp.einsum("gji,gmj->gmi", rotations, bias[group, permutations])
        blocks = jnp.einsum("gki,gmkl,glj->gmij", rotations, blocks[group, permutations], rotations)
        return jnp.mean(bias, axis=0), jnp.mean(blocks, axis=0)


def cubic_correction(coefficients, x, bound: float):
    """β tanh((b̄ + B̄ x)/β) for x (m, 3) thermal units and ``coefficients`` (b̄, B̄) of
    :class:`CubicCorrection`."""
    bias, blocks = coefficients
    return bound * jnp.tanh((bias + jnp.einsum("mij,mj->mi", blocks, x)) / bound)
