"""Potential energy, forces and virial stress over a Dense neighbour list.

Species enter as weights ``w[i, a]``: one-hot for a plain configuration, or the
concentrations c_i^a of the species mean field (DESIGN.md §2). With radial functions
φ_ab and f_{b→a} (see :mod:`dmdjax.potentials`) the site energy is

    e_i = ½ Σ_j Σ_ab w_i^a φ_ab(r_ij) w_j^b + Σ_a w_i^a F_a(ρ_{i,a}),
    ρ_{i,a} = Σ_j Σ_b w_j^b f_{b→a}(r_ij),

which is the plain EAM/pair energy (DESIGN.md §1) for one-hot weights. The assembly
takes the radial values as input, so the variational-Gaussian free energy reuses it
with Gaussian-averaged radial functions.

Stress follows ASE's sign convention: σ = (1/V) ∂E/∂ε at ε = 0 for the homogeneous
deformation x → (I + ε) x of positions and cell (negative under compression),
returned in Voigt order (xx, yy, zz, yz, xz, xy) in eV/Å³.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from . import _validate
from ._precision import HIGHEST
from . import neighbors as _neighbors
from . import pair_sums
from .cell import Cell
from .potentials import DENSITY, PAIR, Potential
from .systems import System, replicas_needed, replicate, species_weights


class PairGeometry(NamedTuple):
    """Displacements to neighbours: ``displacement[i, m] = x_j − x_i`` (minimum image)."""

    displacement: Float[Array, "n m d"]
    mask: Bool[Array, "n m"]
    idx: Int[Array, "n m"]


def pair_geometry(positions: Float[Array, "n d"], cell: Cell, neighbor_idx: Int[Array, "n m"]) -> PairGeometry:
    """Minimum-image vectors from each atom to its listed neighbours."""
    n = positions.shape[0]
    mask = neighbor_idx < n
    j = jnp.where(mask, neighbor_idx, 0)
    displacement = cell.displacement(positions[j], positions[:, None, :])
    return PairGeometry(displacement, mask, neighbor_idx)


def masked_distance(displacement: Float[Array, "... d"], mask: Bool[Array, "..."], fill: float) -> Array:
    """|displacement| where ``mask``, else ``fill``; gradients stay finite everywhere."""
    squared = jnp.sum(displacement * displacement, axis=-1)
    safe = jnp.where(mask, squared, 1.0)
    return jnp.where(mask, jnp.sqrt(safe), fill)


def as_weights(species, n_species: int, dtype) -> Float[Array, "n s"]:
    """Integer species ``(N,)`` -> one-hot ``(N, S)``; float weights ``(N, S)`` pass through."""
    species = jnp.asarray(species)
    if jnp.issubdtype(species.dtype, jnp.integer):
        return species_weights(species, n_species, dtype)
    if species.ndim != 2 or species.shape[1] != n_species:
        raise ValueError(
            f"species weights must have shape (N, {n_species}); got {species.shape}"
        )
    return species.astype(dtype)


def assemble_site_energies(
    potential: Potential,
    radial: Float[Array, "n m t s s"],
    weights: Float[Array, "n s"],
    neighbor_idx: Int[Array, "n m"],
    rows: Int[Array, " r"] | None = None,
) -> Float[Array, " n"]:
    """Site energies e_i (eV) from radial values ``(N, M, T, S, S)`` and species weights.

    With ``rows`` (``(R,)`` atom indices), ``radial`` and ``neighbor_idx`` hold those atoms'
    rows only (``(R, M, ...)``) and the R site energies are returned: a local update.
    """
    neighbor_weights = _neighbors.gather(weights, neighbor_idx)  # (N, M, S); zero on padding slots
    if rows is not None:
        weights = weights[rows]
    # Contract every term with the neighbours' weights: [n, PAIR, a] = Σ_j Σ_b φ_ab w_j^b and
    # [n, DENSITY, a] = ρ_{n,a} = Σ_j Σ_b f_{b→a} w_j^b.
    summed = jnp.einsum("nmtbx,nmb->ntx", radial, neighbor_weights, precision=HIGHEST)
    energies = 0.5 * jnp.sum(weights * summed[:, PAIR], axis=-1)
    if potential.is_embedded:
        energies = energies + jnp.sum(weights * potential.embedding(summed[:, DENSITY]), axis=-1)
    return energies


def radial_from_geometry(potential: Potential, geometry: PairGeometry) -> Float[Array, "n m t s s"]:
    """The potential's radial values (φ_ab, f_{b→a}) on every listed pair (0 on padding)."""
    return potential.radial(masked_distance(geometry.displacement, geometry.mask, 2.0 * potential.cutoff))


def site_energies_from_geometry(potential: Potential, geometry: PairGeometry, weights) -> Array:
    """Site energies ``(N,)`` eV from a :class:`PairGeometry` and species weights ``(N, S)``."""
    return assemble_site_energies(potential, radial_from_geometry(potential, geometry), weights, geometry.idx)


#: Pairs closer than this fraction of the potential's cut-off are refused at the public boundary
#: (0.75 Å for the Mendelev Al–Mg potential): coincident or nearly coincident atoms, for which
#: tabulated potentials return meaningless numbers (3e43 eV and NaN forces at r = 0).
MIN_DISTANCE_FRACTION = 0.1


@eqx.filter_jit
def _closest_pair(positions, cell, idx):
    geometry = pair_geometry(positions, cell, idx)
    distance = masked_distance(geometry.displacement, geometry.mask, jnp.inf)
    flat = jnp.argmin(distance)
    return distance.reshape(-1)[flat], flat // idx.shape[1], idx.reshape(-1)[flat]


def check_separation(potential: Potential, positions, cell: Cell, neighbors) -> None:
    """Host side (skipped for traced values): raise ``ValueError`` naming the closest pair if
    two atoms are closer than :data:`MIN_DISTANCE_FRACTION` × the potential's cut-off."""
    overflow = neighbors.overflow
    if not _validate.is_concrete((positions, overflow)) or neighbors.idx.shape[1] == 0 or bool(overflow):
        return  # traced, no pairs, or an overflowed list (its own error follows)
    minimum = MIN_DISTANCE_FRACTION * potential.cutoff
    closest = _closest_pair(positions, cell, neighbors.idx)
    if not _validate.is_concrete(closest):
        return  # inside a trace
    distance, i, j = (_validate.host_array(v) for v in closest)
    if distance < minimum:
        raise ValueError(f"atoms {int(i)} and {int(j)} are {float(distance):.4g} Å apart, closer than the minimum "
                         f"{minimum:.4g} Å (10 % of the potential's {potential.cutoff:g} Å cut-off): coincident or "
                         "overlapping atoms (check the structure)")


def _check_inputs(potential: Potential, positions, species, cell: Cell, neighbors) -> None:
    if not _validate.is_concrete((positions, species)):
        return
    n = np.shape(positions)[0]
    _validate.shape(positions, (n, cell.dim), "positions")
    _validate.finite(positions, "positions")
    if np.ndim(species) == 1:
        _validate.shape(species, (n,), "species")
        sp = _validate.host_array(species)
        bad = sp[(sp < 0) | (sp >= potential.n_species)]
        if bad.size:
            raise ValueError(
                f"species index {int(bad[0])} out of range for the potential's species {list(potential.species)}"
            )
    else:
        _validate.shape(species, (n, potential.n_species), "species weights")
    if neighbors.idx.shape[0] != n:
        raise ValueError(f"neighbour list is for {neighbors.idx.shape[0]} atoms but positions have {n}")


def site_energies(
    potential: Potential,
    positions: Float[Array, "n d"],
    species,
    cell: Cell,
    neighbors: _neighbors.NeighborList,
) -> Float[Array, " n"]:
    """Per-atom energies e_i (eV); their sum is the potential energy.

    Arguments:
        potential: a :class:`~dmdjax.potentials.Potential`.
        positions: ``(N, d)``, Å.
        species: ``(N,)`` integer indices into ``potential.species``, or ``(N, S)`` weights.
        cell: the :class:`~dmdjax.cell.Cell`.
        neighbors: a :class:`~dmdjax.neighbors.NeighborList` for these positions with
            ``cutoff >= potential.cutoff``; an overflowed list raises.
    """
    _check_inputs(potential, positions, species, cell, neighbors)
    _check_list(potential, neighbors)
    weights = as_weights(species, potential.n_species, positions.dtype)
    return _neighbors.check(pair_sums.site_energies(_model(potential, cell, neighbors), positions, None, weights),
                            neighbors)


def _model(potential: Potential, cell: Cell, neighbors) -> pair_sums.PairModel:
    return pair_sums.pair_model(pair_sums.RadialAverages(potential, cell.dim), cell, neighbors.idx,
                                decomposition=getattr(neighbors, "decomposition", None))


def _check_list(potential: Potential, neighbors) -> None:
    if neighbors.cutoff < potential.cutoff:
        raise ValueError(
            f"neighbour list cut-off {neighbors.cutoff} Å is below the potential's {potential.cutoff} Å"
        )


def potential_energy(potential: Potential, positions, species, cell: Cell, neighbors) -> Float[Array, ""]:
    """Total potential energy V (eV); arguments as :func:`site_energies`. Its gradient (the
    forces) is analytic (:mod:`dmdjax.pair_sums`): integer species use only their own species
    pair's functions, weights the mean-field sums."""
    _check_inputs(potential, positions, species, cell, neighbors)
    _check_list(potential, neighbors)
    model = _model(potential, cell, neighbors)
    species = jnp.asarray(species)
    if jnp.issubdtype(species.dtype, jnp.integer):
        total = pair_sums.plain_total_energy(positions, model, species)
    else:
        total = pair_sums.total_energy(positions, None, as_weights(species, potential.n_species, positions.dtype),
                                       model)
    return _neighbors.check(total, neighbors)


def forces(potential: Potential, positions, species, cell: Cell, neighbors) -> Float[Array, "n d"]:
    """Forces −∂V/∂x (eV/Å), by automatic differentiation."""
    return -jax.grad(potential_energy, argnums=1)(potential, positions, species, cell, neighbors)


def virial_derivative(potential: Potential, positions, species, cell: Cell, neighbors) -> Float[Array, "d d"]:
    """∂V/∂ε at ε = 0 for x → (I + ε) x applied to positions and cell (eV), symmetrised."""
    _check_inputs(potential, positions, species, cell, neighbors)
    weights = as_weights(species, potential.n_species, positions.dtype)
    geometry = pair_geometry(positions, cell, neighbors.idx)

    def strained_energy(strain):
        deformation = jnp.eye(cell.dim, dtype=positions.dtype) + strain
        displacement = jnp.matmul(geometry.displacement, deformation.T, precision=HIGHEST)
        strained = geometry._replace(displacement=displacement)
        return jnp.sum(site_energies_from_geometry(potential, strained, weights))

    derivative = jax.grad(strained_energy)(jnp.zeros((cell.dim, cell.dim), positions.dtype))
    return _neighbors.check(0.5 * (derivative + derivative.T), neighbors)


def stress(potential: Potential, positions, species, cell: Cell, neighbors) -> Float[Array, "d d"]:
    """Virial stress σ = (1/V) ∂V/∂ε (eV/Å³, ASE's sign), ``(d, d)``; periodic cells only."""
    if not cell.fully_periodic:
        raise ValueError(f"stress needs a fully periodic cell; pbc is {cell.pbc}")
    return virial_derivative(potential, positions, species, cell, neighbors) / cell.volume().astype(positions.dtype)


def full_to_voigt(matrix: Float[Array, "3 3"]) -> Float[Array, "6"]:
    """A symmetric 3×3 tensor in Voigt order (xx, yy, zz, yz, xz, xy)."""
    m = jnp.asarray(matrix)
    return jnp.stack([m[0, 0], m[1, 1], m[2, 2], m[1, 2], m[0, 2], m[0, 1]])


class EnergyForcesStress(NamedTuple):
    """Results of :func:`evaluate`: energy (eV), forces (N, d) eV/Å, stress (Voigt, eV/Å³) or None."""

    energy: Array
    forces: Array
    stress: Array | None
    site_energies: Array


def evaluate(potential: Potential, system: System, neighbors: _neighbors.NeighborList | None = None,
             *, skin: float = 0.5) -> EnergyForcesStress:
    """Energy, forces, per-atom energies and (for periodic 3-D cells) stress of a system.

    The system's species are mapped onto the potential's by name (a species the
    potential lacks raises ``ValueError``). A neighbour list is built when none is given.
    A periodic cell narrower than twice (cut-off + skin) — a primitive or 4-atom fcc cell —
    is replicated (:func:`dmdjax.systems.replicate`) when no list is given, and the results
    are folded back: the energy per copy, the first copy's forces and site energies, the
    same stress.
    """
    system = system.with_species_names(potential.species)
    if neighbors is None:
        repeats = replicas_needed(system.cell, potential.cutoff + skin)
        if repeats != (1,) * system.dim:
            result = evaluate(potential, replicate(system, repeats), skin=skin)
            n, copies = system.n_atoms, int(np.prod(repeats))
            return EnergyForcesStress(result.energy / copies, result.forces[:n], result.stress,
                                      result.site_energies[:n])
        neighbors = _neighbors.neighbor_list(system.positions, system.cell, potential.cutoff, skin=skin)
    _check_inputs(potential, system.positions, system.species, system.cell, neighbors)
    check_separation(potential, system.positions, system.cell, neighbors)
    with_stress = system.cell.fully_periodic and system.dim == 3
    return evaluate_arrays(potential, system.positions, system.species, system.cell, neighbors, with_stress)


@eqx.filter_jit
def evaluate_arrays(potential, positions, species, cell, neighbors, with_stress: bool = False) -> EnergyForcesStress:
    """:func:`evaluate`'s compiled kernel on arrays, without its checks: positions ``(N, d)`` Å,
    species ``(N,)`` indices into ``potential.species``; one compilation per shape serves every
    species array and position (molecular statics loops)."""
    model = _model(potential, cell, neighbors)
    species = jnp.asarray(species)
    if jnp.issubdtype(species.dtype, jnp.integer):
        energies, gradient = pair_sums.plain_energy_gradient(model, positions, species)
    else:
        weights = as_weights(species, potential.n_species, positions.dtype)
        energies, gradient, _, _ = pair_sums.energy_gradient(model, positions, None, weights)
    energies = _neighbors.check(energies, neighbors)
    sigma = full_to_voigt(stress(potential, positions, species, cell, neighbors)) if with_stress else None
    return EnergyForcesStress(pair_sums.total(energies, model.decomposition), -gradient, sigma, energies)


def site_hessian_trace(potential: Potential, positions, species, cell: Cell, neighbors) -> Float[Array, " n"]:
    """tr ∇²_{x_i x_i} V for every atom i (eV/Å²): the trace of the diagonal Hessian blocks.

    Computed exactly and in O(N M) from the energy terms that depend on x_i alone —
    the pairs (i, j), the embedding of i, and the embedding of each neighbour j with
    ρ_j changed only through f(r_ij) — by a d×d Hessian per atom, in row blocks (bounded
    memory). Needs a full (both-ways) Dense neighbour list, which
    :func:`~dmdjax.neighbors.neighbor_list` is. Used for the stiffness first guess
    k_i = tr ∇²_ii V / d (DESIGN.md §3).
    """
    weights = as_weights(species, potential.n_species, positions.dtype)
    fill = 2.0 * potential.cutoff
    n = positions.shape[0]
    model = _model(potential, cell, neighbors)
    density0 = pair_sums.densities(model, positions, None, weights) if potential.is_embedded else None

    def local_energy(shift, displacement, mask, w_i, w_j, rho_j0, f_ij0):
        # Energy terms that move with x_i -> x_i + shift (displacement is x_j - x_i).
        radial = potential.radial(masked_distance(displacement - shift, mask, fill))
        # The full pair energy of i:
        energy = jnp.einsum("a,mab,mb->", w_i, radial[:, PAIR], w_j, precision=HIGHEST)
        if potential.is_embedded:
            rho_i = jnp.einsum("mbh,mb->h", radial[:, DENSITY], w_j, precision=HIGHEST)
            energy += jnp.sum(w_i * potential.embedding(rho_i))
            from_i = jnp.einsum("mbh,b->mh", radial[:, DENSITY] - f_ij0, w_i, precision=HIGHEST)
            embedded = jnp.sum(w_j * potential.embedding(rho_j0 + from_i), axis=-1)
            energy += jnp.sum(jnp.where(mask, embedded, 0.0))
        return energy

    def trace(*atom_data):
        zero = jnp.zeros((cell.dim,), positions.dtype)
        return jnp.trace(jax.hessian(local_energy)(zero, *atom_data))

    def block(rows, idx):
        mask = idx < n
        displacement = cell.displacement(_neighbors.gather(positions, idx), positions[rows][:, None, :])
        neighbor_weights = _neighbors.gather(weights, idx)  # (B, M, S)
        if potential.is_embedded:
            pair_density0 = potential.radial(masked_distance(displacement, mask, fill))[:, :, DENSITY]
            neighbor_density0 = _neighbors.gather(density0, idx)
        else:
            pair_density0 = neighbor_density0 = None
        return jax.vmap(trace)(displacement, mask, weights[rows], neighbor_weights, neighbor_density0,
                               pair_density0)

    rows = max(1, HESSIAN_BLOCK_SLOTS // max(1, neighbors.idx.shape[1]))
    return _neighbors.check(pair_sums.map_rows(block, neighbors.idx, rows), neighbors)


#: Neighbour slots per row block of :func:`site_hessian_trace` (each slot holds its d × d block).
HESSIAN_BLOCK_SLOTS = 1 << 14
