r"""Pair and embedding energies summed over a full neighbour list, with their analytic gradient,
in row blocks: the hot path of the plain energy and of the VG free energy (DESIGN.md §1–2).

With species weights w_i^a (one-hot, or the concentrations of the mean field), per-atom
variances a_i = 1/(βk_i) (0 for the plain energy and for pinned atoms), pair variances
v_ij = a_i + a_j and radial functions G(R, v) — the potential's φ_ab, f_{b→a} (v = 0) or
their Gaussian averages (:class:`RadialAverages`) — the energy is

.. math::

    E = Σ_i ½ Σ_j w_i·Φ(R_ij, v_ij) w_j + Σ_i Σ_a w_i^a F_a(ρ_{i,a}),
    \qquad ρ_{i,a} = Σ_j Σ_b w_j^b G_{ba}(R_ij, v_ij).

Its gradient follows in a second pass over the same full (both-ways) list, with the
neighbours' per-atom terms h_j^a = w_j^a F'_a(ρ_{j,a}) *gathered*: for every listed pair,
with ∂ ∈ {∂_R, ∂_v},

.. math::

    ∂E/∂q_ij = w_i·(∂Φ w_j + ∂G h_j) + h_i·(∂Gᵀ w_j),

    ∂E/∂X_i = −Σ_j (∂E/∂R_ij) (X_j − X_i)/R_ij,\quad ∂E/∂a_i = Σ_j ∂E/∂v_ij,

    ∂E/∂w_i^a = Σ_j (Φ w_j + G h_j)_a + F_a(ρ_{i,a}).

No scatter-add and no reverse-mode tape of per-pair values: each pass holds one block of
rows (``block_rows`` atoms × M slots) at a time (``lax.map``), so the temporaries are
bounded by the block, not by N. :func:`total_energy` carries the gradient as a custom JVP
rule written in plain JAX, so every transformation of second order (Hessian-vector products,
``jax.hessian``, forward-mode Jacobians) differentiates that rule.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from . import domain
from ._precision import HIGHEST
from .cell import Cell
from .potentials import DENSITY, PAIR, Potential
from .quadrature import SQRT2, pair_sigma, points_at_sigma

#: Neighbour slots per row block, ``block_rows = max(1, slots // M)``: for the plain functions and
#: for Gaussian averages (which hold every quadrature node of a slot). Measured best on a 2-core
#: CPU (``scripts/bench_hot_path.py``); the temporaries of a block are a fixed cost, not per atom.
BLOCK_SLOTS, AVERAGED_BLOCK_SLOTS = 1 << 15, 1 << 13
#: The same on accelerators, where a block must fill the device (not yet measured on a GPU).
ACCELERATOR_BLOCK_SLOTS, ACCELERATOR_AVERAGED_BLOCK_SLOTS = 1 << 22, 1 << 20


class RadialAverages(eqx.Module):
    """The radial block ``(T, S, S)`` of ``potential`` at pair distance R and variance v:
    the functions themselves (``rule=None``, v ignored) or their Gaussian averages by the
    quadrature ``rule`` with ``nodes`` (:func:`dmdjax.quadrature.points_at_sigma`)."""

    potential: Potential
    dim: int = eqx.field(static=True)
    rule: str | None = eqx.field(static=True, default=None)
    nodes: int = eqx.field(static=True, default=8)

    def values(self, distance: Array, sigma: Array | None) -> Array:
        if self.rule is None:
            return self.potential.radial(distance)
        r_q, f_q = points_at_sigma(distance, sigma, self.dim, self.rule, self.nodes)
        return jnp.sum(f_q[..., None, None, None] * self.potential.radial(r_q), axis=-4)

    def density(self, distance: Array, variance: Array | None) -> Array:
        """The (averaged) densities alone, ``R.shape + (S, S)`` (the first pass of the EAM sums)."""
        if self.rule is None:
            return self.potential.density(distance)
        sigma = pair_sigma(variance)
        if self.rule == "gauss-hermite" and self.dim == 3:
            r_q, f_q = points_at_sigma(distance, sigma, self.dim, self.rule, self.nodes)
            return jnp.sum(f_q[..., None, None] * self.potential.density(r_q), axis=-3)
        return self.values(distance, sigma)[..., DENSITY, :, :]

    def __call__(self, distance: Array, variance: Array | None, derivatives: bool = False):
        """Values ``R.shape + (T, S, S)``; with ``derivatives`` also ∂_R and ∂_v (zero at v = 0
        and for ``rule=None``)."""
        if self.rule is None:
            if not derivatives:
                return self.potential.radial(distance)
            values, d_r = self.potential.radial_and_derivative(distance)
            return values, d_r, jnp.zeros_like(values)
        sigma = pair_sigma(variance)
        if self.rule == "gauss-hermite" and self.dim == 3:
            return self._hermite_3d(distance, sigma, derivatives)
        if not derivatives:
            return self.values(distance, sigma)
        one, zero = jnp.ones_like(distance), jnp.zeros_like(distance)
        values, (d_r, d_sigma) = jax.vmap(
            lambda tr, ts: jax.jvp(self.values, (distance, sigma), (tr, ts)), out_axes=(None, 0)
        )(jnp.stack([one, zero]), jnp.stack([zero, one]))
        # ∂_v = ∂_σ / (2σ); pinned pairs (σ = 0) have no variance to vary.
        two_sigma = (2.0 * jnp.where(sigma > 0, sigma, 1.0))[..., None, None, None]
        d_v = jnp.where((sigma > 0)[..., None, None, None], d_sigma / two_sigma, 0.0)
        return values, d_r, d_v

    def _hermite_3d(self, distance, sigma, derivatives):
        r"""The 3-D Gauss–Hermite reduction with its derivatives in closed form: with
        s_q = R + α t_q (α = √2 σ), h(s) = s g(|s|) and c_q = w_q/√π,
        ⟨g⟩ = A/R, ∂_R⟨g⟩ = (B − ⟨g⟩)/R, ∂_v⟨g⟩ = C/(R α), where A = Σ c_q h(s_q),
        B = Σ c_q h'(s_q), C = Σ c_q t_q h'(s_q) and h'(s) = g(|s|) + |s| g'(|s|)."""
        dtype = distance.dtype
        t, w = np.polynomial.hermite.hermgauss(self.nodes)
        t, c = jnp.asarray(t, dtype), jnp.asarray(w / np.sqrt(np.pi), dtype)
        alpha = SQRT2 * sigma
        shifted = distance[..., None] + alpha[..., None] * t  # (..., Q)
        r = jnp.abs(shifted)
        expand = (Ellipsis, None, None, None)
        radius = distance[expand]
        if not derivatives:
            g = self.potential.radial(r)
            return jnp.sum((c * shifted)[expand] * g, axis=-4) / radius
        g, slope = self.potential.radial_and_derivative(r)
        h = shifted[expand] * g
        h_prime = g + r[expand] * slope
        values = jnp.sum(c[:, None, None, None] * h, axis=-4) / radius
        d_r = (jnp.sum(c[:, None, None, None] * h_prime, axis=-4) - values) / radius
        across = jnp.sum((c * t)[:, None, None, None] * h_prime, axis=-4)
        positive = (alpha > 0)[expand]
        d_v = jnp.where(positive, across / (radius * jnp.where(positive, alpha[expand], 1.0)), 0.0)
        return values, d_r, d_v


class PairModel(eqx.Module):
    """What :func:`total_energy` sums: the radial functions, the cell and the list (static block
    size), and the list's :class:`~dmdjax.domain.Decomposition` when its rows are sharded over
    devices (then every sum runs per slab with a halo exchange, :mod:`dmdjax.domain`)."""

    radial: RadialAverages
    cell: Cell
    neighbor_idx: Int[Array, "n m"]
    block_rows: int = eqx.field(static=True)
    decomposition: domain.Decomposition | None = eqx.field(static=True, default=None)

    @property
    def potential(self) -> Potential:
        return self.radial.potential


def pair_model(radial: RadialAverages, cell: Cell, neighbor_idx, block_rows: int | None = None,
               decomposition: domain.Decomposition | None = None) -> PairModel:
    """A :class:`PairModel`; ``block_rows`` defaults to :data:`BLOCK_SLOTS` (or
    :data:`AVERAGED_BLOCK_SLOTS`) // M; ``decomposition``: the list's, when sharded."""
    slots = max(1, neighbor_idx.shape[1])
    if jax.default_backend() == "cpu":
        per_block = BLOCK_SLOTS if radial.rule is None else AVERAGED_BLOCK_SLOTS
    else:
        per_block = ACCELERATOR_BLOCK_SLOTS if radial.rule is None else ACCELERATOR_AVERAGED_BLOCK_SLOTS
    rows = max(1, per_block // slots) if block_rows is None else int(block_rows)
    return PairModel(radial, cell, neighbor_idx, rows, decomposition)


class Gradient(NamedTuple):
    """Site energies (N,) and the gradient of their sum: ∂/∂X (N, d), ∂/∂a (N,), ∂/∂w (N, S)."""

    site_energies: Array
    positions: Array
    variance: Array
    weights: Array


def _map_rows(fn, model: PairModel, view: domain.View):
    """``fn(rows, idx)`` over the model's row blocks, with rows and neighbour indices in the
    view's extended arrays (one device: the arrays themselves)."""
    return map_rows(lambda rows, idx: fn(rows + view.offset, view.remap(idx)), model.neighbor_idx,
                    model.block_rows)


def _on_shards(kernel, model: PairModel, per_atom: tuple):
    """``kernel(model, view, *per_atom)`` for the rows of every shard, the per-atom arrays
    extended by the halo (:func:`dmdjax.domain.on_shards`); one device: called as it is."""

    def run(view, idx, replicated, arrays):
        radial, cell = replicated
        local = PairModel(radial, cell, idx, model.block_rows)
        return kernel(local, view, *(None if a is None else view.extend(a) for a in arrays))

    return domain.on_shards(run, model.decomposition, model.neighbor_idx, (model.radial, model.cell), per_atom)


def _own(values: Array, view: domain.View) -> Array:
    """The view's own rows of extended per-atom ``values``."""
    return jax.lax.dynamic_slice_in_dim(values, view.offset, view.n_local)


def map_rows(fn, idx: Int[Array, "n m"], block_rows: int):
    """``fn(rows, neighbor_idx)`` over blocks of ``block_rows`` rows of a list (``lax.map``);
    outputs concatenated to N rows. The last block is shifted back to end at row N (it overlaps
    the one before), so nothing N-sized is padded or copied."""
    n = idx.shape[0]
    block = min(block_rows, n)
    if block >= n:
        return fn(jnp.arange(n), idx)
    n_blocks = -(-n // block)
    starts = jnp.minimum(jnp.arange(n_blocks) * block, n - block)

    def one(start):
        return fn(start + jnp.arange(block), jax.lax.dynamic_slice_in_dim(idx, start, block))

    out = jax.lax.map(one, starts)
    overlap = n_blocks * block - n  # rows of the last block already in the one before

    def join(x):
        head = x[:-1].reshape(((n_blocks - 1) * block,) + x.shape[2:])
        return jnp.concatenate([head, x[-1, overlap:]])

    return jax.tree.map(join, out)


def _gather(values: Array, idx: Array) -> Array:
    """``values[idx]`` with zeros on padding slots (idx = N), without copying ``values``."""
    return jnp.take(values, idx, axis=0, mode="fill", fill_value=0)


def _pair_geometry(model: PairModel, positions, variance, rows, idx):
    """Displacements X_j − X_i, distances, valid-slot mask and pair variances of a block of rows."""
    n = positions.shape[0]
    mask = idx < n
    displacement = model.cell.displacement(_gather(positions, idx), positions[rows][:, None, :])
    squared = jnp.sum(displacement * displacement, axis=-1)
    distance = jnp.where(mask, jnp.sqrt(jnp.where(mask, squared, 1.0)), 2.0 * model.potential.cutoff)
    pair_variance = None if variance is None else variance[rows][:, None] + _gather(variance, idx)
    return displacement, distance, mask, pair_variance


def _pair_terms(model: PairModel, positions, variance, rows, idx, derivatives: bool):
    """Geometry and radial values of one block of rows."""
    displacement, distance, mask, pair_variance = _pair_geometry(model, positions, variance, rows, idx)
    out = model.radial(distance, pair_variance, derivatives)
    keep = mask[..., None, None, None]
    out = jax.tree.map(lambda x: jnp.where(keep, x, 0.0), out)
    return displacement, distance, mask, out


def _contract(block: Array, weights: Array) -> Array:
    """Σ_b block[..., a, b] weights[..., b] without a dot (tiny S: elementwise, fusable)."""
    return jnp.sum(block * weights[..., None, :], axis=-1)


def _contract_first(block: Array, weights: Array) -> Array:
    """Σ_b weights[..., b] block[..., b, a]."""
    return jnp.sum(block * weights[..., :, None], axis=-2)


@eqx.filter_jit  # also cached for calls outside jit (the row blocks are a loop)
def densities(model: PairModel, positions, variance, weights) -> Float[Array, "n s"]:
    """ρ_{i,a} = Σ_j Σ_b w_j^b G_{ba}(R_ij, v_ij), ``(N, S)``."""
    return _on_shards(_densities, model, (positions, variance, weights))


def _densities(model: PairModel, view: domain.View, positions, variance, weights):
    def block(rows, idx):
        _, distance, mask, pair_variance = _pair_geometry(model, positions, variance, rows, idx)
        density = jnp.where(mask[..., None, None], model.radial.density(distance, pair_variance), 0.0)
        return jnp.sum(_contract_first(density, _gather(weights, idx)), axis=1)

    return _map_rows(block, model, view)


def _embedding(potential: Potential, density):
    """F_a(ρ_a) and F'_a(ρ_a), each ``(N, S)``."""
    return jax.jvp(potential.embedding, (density,), (jnp.ones_like(density),))


@eqx.filter_jit  # also cached for calls outside jit (the row blocks are a loop)
def site_energies(model: PairModel, positions, variance, weights) -> Float[Array, " n"]:
    """e_i = ½ Σ_j w_i·Φ w_j + Σ_a w_i^a F_a(ρ_{i,a}) (eV), ``(N,)``; ``variance`` ``(N,)`` or None."""
    return _on_shards(_site_energies, model, (positions, variance, weights))


def _site_energies(model: PairModel, view: domain.View, positions, variance, weights):
    potential = model.potential

    def pair_block(rows, idx):
        *_, radial = _pair_terms(model, positions, variance, rows, idx, False)
        neighbor_weights = _gather(weights, idx)
        pair = jnp.sum(_contract(radial[..., PAIR, :, :], neighbor_weights), axis=1)
        out = 0.5 * jnp.sum(weights[rows] * pair, axis=-1)
        if potential.is_embedded:
            density = jnp.sum(_contract_first(radial[..., DENSITY, :, :], neighbor_weights), axis=1)
            out = out + jnp.sum(weights[rows] * potential.embedding(density), axis=-1)
        return out

    return _map_rows(pair_block, model, view)


@eqx.filter_jit  # also cached for calls outside jit (the row blocks are a loop)
def energy_gradient(model: PairModel, positions, variance, weights) -> Gradient:
    """Site energies and the analytic gradient of their sum (module docstring); two passes
    over the list for an embedded potential, one for a pair potential (sharded: a second halo
    exchange, of h_j, between the two)."""
    return _on_shards(_energy_gradient, model, (positions, variance, weights))


def _energy_gradient(model: PairModel, view: domain.View, positions, variance, weights):
    potential = model.potential
    dtype = positions.dtype
    n_species = weights.shape[1]
    if potential.is_embedded:
        embedding, slope = _embedding(potential, _densities(model, view, positions, variance, weights))
        host = view.extend(_own(weights, view) * slope)  # h_i^a = w_i^a F'_a(ρ_{i,a})
    else:
        embedding = host = None

    def block(rows, idx):
        displacement, distance, mask, (radial, d_r, d_v) = _pair_terms(model, positions, variance, rows, idx, True)
        w_i, w_j = weights[rows][:, None, :], _gather(weights, idx)
        pair = _contract(radial[..., PAIR, :, :], w_j)  # (B, M, S): (Φ w_j)_a
        energy = 0.5 * jnp.sum(w_i[:, 0] * jnp.sum(pair, axis=1), axis=-1)
        into_me = pair
        derivative = []
        for d in (d_r, d_v):
            along = _contract(d[..., PAIR, :, :], w_j)
            if potential.is_embedded:
                h_j = _gather(host, idx)
                along = along + _contract(d[..., DENSITY, :, :], h_j)
                across = jnp.sum(host[rows][:, None, :] * _contract_first(d[..., DENSITY, :, :], w_j), axis=-1)
            else:
                across = 0.0
            derivative.append(jnp.sum(w_i * along, axis=-1) + across)
        if potential.is_embedded:
            into_me = into_me + _contract(radial[..., DENSITY, :, :], _gather(host, idx))
            energy = energy + jnp.sum(weights[rows] * embedding[rows - view.offset], axis=-1)
        d_distance, d_variance = derivative
        unit = displacement / jnp.where(mask, distance, 1.0)[..., None]
        g_positions = -jnp.sum(jnp.where(mask, d_distance, 0.0)[..., None] * unit, axis=1)
        g_variance = jnp.sum(d_variance, axis=1)
        g_weights = jnp.sum(into_me, axis=1)
        if potential.is_embedded:
            g_weights = g_weights + embedding[rows - view.offset]
        return energy, g_positions, g_variance, g_weights

    energies, g_positions, g_variance, g_weights = _map_rows(block, model, view)
    g_weights = g_weights.reshape(-1, n_species).astype(dtype)
    return Gradient(energies, g_positions, g_variance, g_weights)


def _resolved_block(model: PairModel, positions, variance, rows, idx, components):
    """Averages of a block of rows per component pair, ``(r, M, λ, κ, T)`` (λ the neighbour's, κ the
    host's component; zero on padding slots)."""
    _, distance, mask, _ = _pair_geometry(model, positions, None, rows, idx)
    pair_variance = variance[rows][:, None, None, :] + _gather(variance, idx)[:, :, :, None]
    distance = jnp.broadcast_to(distance[..., None, None], pair_variance.shape)
    averaged = model.radial(distance, pair_variance)  # (r, M, λ, κ, T, S, S), [..., t, source, host]
    n_components = len(components)
    picked = jnp.stack([jnp.stack([averaged[:, :, lam, kap, :, components[lam], components[kap]]
                                   for kap in range(n_components)], axis=2)
                        for lam in range(n_components)], axis=2)
    return jnp.where(mask[..., None, None, None], picked, 0.0)


def resolved_averages(model: PairModel, positions, variance, components) -> Float[Array, "n m t c c"]:
    """The Gaussian averages of every listed pair per component pair (per-species widths), in the
    layout of :meth:`RadialAverages.__call__` over components: ``(N, M, T, C, C)``,
    ``[..., t, λ (neighbour), κ (host)]``; arguments as :func:`resolved_site_energies`."""
    components = tuple(int(a) for a in components)
    picked = _resolved_block(model, positions, variance, jnp.arange(positions.shape[0]), model.neighbor_idx,
                             components)
    return jnp.moveaxis(picked, -1, 2)


def resolved_site_energies(model: PairModel, positions, variance, weights, components) -> Float[Array, " n"]:
    r"""Site energies (eV, ``(N,)``) of the species mean field with one Gaussian per site *and
    species* (DESIGN.md §2.1): components κ (the mean field's species, potential species
    ``components[κ]``) with weights w_iκ and variances a_iκ, pair variances a_iκ + a_jλ:

    .. math::

        e_i = Σ_κ w_iκ [½ Σ_j Σ_λ w_jλ ⟨φ_{κλ}⟩(R_ij, a_iκ + a_jλ) + F_κ(ρ_iκ)],
        \qquad ρ_iκ = Σ_j Σ_λ w_jλ ⟨f_{λ→κ}⟩(R_ij, a_iκ + a_jλ).

    Arguments:
        model: a :class:`PairModel` with Gaussian averages. positions: ``(N, d)`` Å.
        variance: ``(N, C)`` a_iκ = 1/(βk_iκ), Å² (0 on pinned atoms). weights: ``(N, C)``.
        components: C potential species indices (static).

    Differentiated by JAX's autodiff; each row block is rematerialised (``jax.checkpoint``) so the
    reverse pass holds one block's pair values at a time. Every pair is averaged C² times.
    """
    potential = model.potential
    components = tuple(int(a) for a in components)
    n_components = len(components)

    def block(rows, idx):
        picked = _resolved_block(model, positions, variance, rows, idx, components)
        summed = jnp.einsum("rmlkt,rml->rkt", picked, _gather(weights, idx), precision=HIGHEST)  # (r, κ, T)
        own = weights[rows]
        energy = 0.5 * jnp.sum(own * summed[..., PAIR], axis=-1)
        if potential.is_embedded:
            density = summed[..., DENSITY]
            embedded = jnp.stack([potential.embedding(jnp.broadcast_to(density[:, kap, None],
                                                                       (density.shape[0], potential.n_species)))
                                  [:, components[kap]] for kap in range(n_components)], axis=-1)
            energy = energy + jnp.sum(own * embedded, axis=-1)
        return energy

    rows = max(1, model.block_rows // (n_components * n_components))
    return map_rows(jax.checkpoint(block), model.neighbor_idx, rows)


@eqx.filter_custom_jvp
def total_energy(positions, variance, weights, model):
    """Σ_i e_i (eV) with the analytic gradient as its JVP rule (module docstring).

    Arguments:
        positions: ``(N, d)`` Å. variance: ``(N,)`` a_i = 1/(βk_i) in Å² (zeros for the plain
        energy). weights: ``(N, S)`` species weights. model: a :class:`PairModel`.
    """
    return total(site_energies(model, positions, variance, weights), model.decomposition)


def total(energies: Float[Array, " n"], decomposition: domain.Decomposition | None = None) -> Float[Array, ""]:
    """Σ energies in two levels (rows of 256, then their sums): XLA:CPU reduces a long float32
    array sequentially, which loses ~1e-5 eV per atom at 10⁴ atoms; this keeps ~1e-7. With a
    ``decomposition`` (energies sharded over it), per shard and then over the shards."""
    if decomposition is not None:
        return domain.summed(total, energies, decomposition)
    n = energies.shape[0]
    width = 256
    if n <= width:
        return jnp.sum(energies)
    padded = jnp.pad(energies, (0, -n % width))
    return jnp.sum(jnp.sum(padded.reshape(-1, width), axis=1))


@total_energy.def_jvp
def _total_energy_jvp(primals, tangents):
    positions, variance, weights, model = primals
    t_positions, t_variance, t_weights, t_model = tangents
    gradient = energy_gradient(model, positions, variance, weights)
    value = total(gradient.site_energies, model.decomposition)
    tangent = jnp.zeros_like(value)
    for g, t in ((gradient.positions, t_positions), (gradient.variance, t_variance), (gradient.weights, t_weights)):
        if t is not None:
            tangent = tangent + jnp.sum(g * t)
    if any(leaf is not None for leaf in jax.tree.leaves(t_model)):
        tangent = tangent + _model_tangent(lambda m: total(site_energies(m, positions, variance, weights),
                                                           model.decomposition),
                                           model, t_model)
    return value, tangent


def _plain_terms(model: PairModel, positions, species):
    """The per-block radial values of a plain configuration (only each pair's own species'
    functions, zero on padding) and the block geometry, for :func:`plain_energy_gradient`."""
    potential = model.potential

    def radial(rows, idx, mask, distance):
        host = jnp.broadcast_to(species[rows][:, None], idx.shape)
        neighbor = jnp.take(species, idx, axis=0, mode="fill", fill_value=0)
        values, slopes = potential.species_radial(distance, host, neighbor)
        keep = mask[..., None]
        return jnp.where(keep, values, 0.0), jnp.where(keep, slopes, 0.0)

    def geometry(rows, idx):
        displacement, distance, mask, _ = _pair_geometry(model, positions, None, rows, idx)
        return displacement, distance, mask

    return radial, geometry


def plain_densities(model: PairModel, positions, species) -> Float[Array, " n"]:
    """EAM: each site's density of its own species, ρ_i = Σ_j f_{s_j→s_i}(r_ij) ``(N,)``, for
    integer ``species`` ``(N,)`` (only the pairs' own density functions are evaluated)."""
    return _on_shards(_plain_densities, model, (positions, species))


def _plain_densities(model: PairModel, view: domain.View, positions, species):
    radial, geometry = _plain_terms(model, positions, species)

    def density_block(rows, idx):
        _, distance, mask = geometry(rows, idx)
        values, _ = radial(rows, idx, mask, distance)
        return jnp.sum(values[..., 1], axis=1)

    return _map_rows(density_block, model, view)


@eqx.filter_jit  # also cached for calls outside jit (the row blocks are a loop)
def plain_energy_gradient(model: PairModel, positions, species) -> tuple[Array, Array]:
    """Site energies ``(N,)`` and ∂E/∂X ``(N, d)`` of a plain configuration of integer
    ``species`` ``(N,)``: per pair only the splines of its own species pair
    (:meth:`~dmdjax.potentials.Potential.species_radial`), not the whole ``(T, S, S)`` block."""
    return _on_shards(_plain_energy_gradient, model, (positions, species))


def _plain_energy_gradient(model: PairModel, view: domain.View, positions, species):
    potential = model.potential
    radial, geometry = _plain_terms(model, positions, species)

    if potential.is_embedded:
        density = _plain_densities(model, view, positions, species)
        n_species, n = potential.n_species, density.shape[0]
        embedding, slope = _embedding(potential, jnp.broadcast_to(density[:, None], (n, n_species)))
        own = _own(species, view)[:, None]
        embedding = jnp.take_along_axis(embedding, own, axis=1)[:, 0]
        slope = view.extend(jnp.take_along_axis(slope, own, axis=1)[:, 0])

    def block(rows, idx):
        displacement, distance, mask = geometry(rows, idx)
        values, slopes = radial(rows, idx, mask, distance)
        energy = 0.5 * jnp.sum(values[..., 0], axis=1)
        d_distance = slopes[..., 0]
        if potential.is_embedded:
            energy = energy + embedding[rows - view.offset]
            d_distance = d_distance + slope[rows][:, None] * slopes[..., 1] + _gather(slope, idx) * slopes[..., 2]
        unit = displacement / distance[..., None]
        return energy, -jnp.sum(d_distance[..., None] * unit, axis=1)

    return _map_rows(block, model, view)


@eqx.filter_custom_jvp
def plain_total_energy(positions, model, species):
    """Σ_i e_i (eV) of integer ``species`` ``(N,)`` with :func:`plain_energy_gradient` as its JVP rule."""
    return total(plain_energy_gradient(model, positions, species)[0], model.decomposition)


@plain_total_energy.def_jvp
def _plain_total_energy_jvp(primals, tangents):
    positions, model, species = primals
    t_positions, t_model, _ = tangents
    energies, gradient = plain_energy_gradient(model, positions, species)
    value = total(energies, model.decomposition)
    tangent = jnp.zeros_like(value) if t_positions is None else jnp.sum(gradient * t_positions)
    if any(leaf is not None for leaf in jax.tree.leaves(t_model)):
        tangent = tangent + _model_tangent(lambda m: total(plain_energy_gradient(m, positions, species)[0],
                                                           model.decomposition),
                                           model, t_model)
    return value, tangent


def _model_tangent(energy, model, t_model):
    """Forward-mode derivative of ``energy(model)`` along the model's tangents (potential
    parameters, cell): fitting and strain derivatives, not the hot path."""
    dynamic, static = eqx.partition(model, eqx.is_inexact_array)
    t_dynamic = jax.tree.map(lambda p, t: None if p is None else (jnp.zeros_like(p) if t is None else t),
                             dynamic, t_model, is_leaf=lambda x: x is None)
    return jax.jvp(lambda d: energy(eqx.combine(d, static)), (dynamic,), (t_dynamic,))[1]
