r"""The spin-diffusion sampler: overdamped Langevin positions with Kawasaki spin exchange
(seed "Spin-Diffusion", eqs. 21–35; DESIGN.md §5).

State (x, σ), σ_i = ±1 (+1 is ``potential.species[0]``), Σσ fixed. Generator ε⁻¹L_x + L_σ:

* L_x: dx = −∇_x V(x, σ) dt + √(2β⁻¹) dW in the fast time t/ε, discretised with the
  Leimkuhler–Matthews scheme x' = x − h∇V(x) + √(h/2β)(ξ_n + ξ_{n+1}) (fast step h). Its
  invariant measure is exact for quadratic V and O(h²) otherwise (configurational averages).
* L_σ: the spins of a bond (i, j) exchange at r_ij = τ⁻¹ ½(1 − tanh(βΔ_ij V/2)),
  Δ_ij V = V(x, σ^{ij}) − V(x, σ), which satisfies detailed balance with e^{−βV(x,σ)}.
  Simulated exactly in continuous time by uniformisation: candidates at rate Λ = B/τ
  (B bonds), a bond drawn uniformly, accepted with probability τ r_ij = 1/(1 + e^{βΔV}).
  Δ_ij V is computed locally: a pair potential's from the bonds of i and j; an EAM's from
  those bonds and the densities of the sites within the cut-off of i or j, which the state
  keeps while x is held (``"joint"``, ``"frozen"``: O(M) work per candidate, M listed
  neighbours; the scale-separated modes recompute the neighbours' rows, O(M²)). Nothing a
  candidate sees depends on its time within an interval in which x is held (the sampler's
  whole interval, or one Langevin step in ``"joint"``), so the candidates of an interval of
  length Δt are drawn as their number, Poisson(ΛΔt), and run in order: the same law as
  drawing Exp(Λ) waiting times, with two random numbers per candidate instead of three.

Modes (``mode``):

* ``"joint"``: the full process at finite ε; between candidates x moves by Langevin for
  the elapsed time / ε (fast steps h; the remainder carried to the next interval).
* ``"scale-separated"`` (ε → 0, seed eqs. 30–34): every candidate sees x distributed by the
  quasi-stationary law of the current basin, so it is accepted with the basin-averaged
  rate r̄_ij(σ) = E[r_ij(x, σ)] (one x per candidate: the acceptance probability is then
  exactly τ r̄_ij). The average is estimated by ``rate_average``:
  ``"basin"`` — ``basin_steps`` Langevin steps at the current σ before every candidate;
  ``"gaussian"`` — x drawn from the variational Gaussian N(X*, (βk*)⁻¹) of the VG free
  energy relaxed at s = σ (re-relaxed, warm-started, after every accepted exchange).
* ``"frozen"``: x fixed at the sampler's ``positions``; the spin process alone (a lattice
  gas with Kawasaki dynamics; also the exchange law of the tests). The radial values of
  every listed pair are tabulated once (N·M·T·S² numbers), so a candidate only gathers.

Replicas are the unit of parallelism: :func:`sample` runs R replicas in one jitted,
vmapped loop with one PRNG key each, shards them over the available devices
(``jax.sharding``), and returns E[σ_i(t)] and its standard error on a time grid.
"""

from __future__ import annotations

import os
from typing import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from . import _validate, io, kinetics, pair_sums
from .cell import Cell
from .energy import (site_energies_from_geometry, assemble_site_energies, masked_distance, pair_geometry,
                     radial_from_geometry)
from .ensemble import batch_sharding
from ._precision import HIGHEST
from .free_energy import VGFreeEnergy
from .neighbors import NeighborList, gather
from .potentials import DENSITY, PAIR, Potential
from .progress import track
from .state import DMDState
from .units import beta_from_temperature, temperature_from_beta

MODES = ("joint", "scale-separated", "frozen")
CANDIDATES = ("bonds", "minority")
RATE_AVERAGES = ("basin", "gaussian")
_SELECT_SWAP_MAX_SITES = 128  # see SpinDiffusionSampler._candidate
REBUILD_EVERY = 25
"""Langevin steps between checks of a replica's neighbour list (``"joint"``). Under ``vmap``
every check searches every replica's list (a select, not a branch), ~4 force evaluations of a
1000-atom slab: every 25 steps it costs ~15 % of the loop."""
MEAN_STEPS = 10
"""Time constant, in Langevin steps, of the exponential average of x that the lists follow."""


def spin_weights(spins: Float[Array, " n"]) -> Float[Array, "n 2"]:
    """One-hot species weights of spins: σ = +1 → species 0, σ = −1 → species 1."""
    return jnp.stack([(1 + spins) / 2, (1 - spins) / 2], axis=-1)


def _species(spins) -> Int[Array, " n"]:
    """Integer species of spins: σ = +1 → 0, σ = −1 → 1."""
    return (spins < 0).astype(jnp.int32)


class SamplerState(eqx.Module):
    """One replica.

    Attributes:
        positions: x ``(N, d)`` Å (in ``"gaussian"`` mode: the VG mean X*).
        spins: σ ``(N,)`` (±1, in the dtype of the positions).
        stiffness: k* ``(N,)`` eV/Å² (``"gaussian"`` mode; ones otherwise).
        noise: the Leimkuhler–Matthews noise ξ_n ``(N, d)``.
        density: EAM: each site's density of its own species, ρ_i = Σ_j f_{σ_j→σ_i}(r_ij)
            ``(N,)`` at the current x and σ, kept by the modes in which x is held between
            candidates (``"joint"``, ``"frozen"``) so that a candidate's swap energy is O(M);
            zeros otherwise.
        minority: ``candidates="minority"``: the sites of the σ = −1 species ``(K,)``, in no
            particular order (an exchange moves one entry); empty otherwise.
        neighbors: this replica's neighbour list, searched again (same capacity) at
            ``mean_positions`` where they moved more than skin/10 since its last search,
            checked every :data:`REBUILD_EVERY` Langevin steps and at every
            :meth:`~SpinDiffusionSampler.advance`.
        mean_positions: x averaged over the last ~:data:`MEAN_STEPS` Langevin steps
            (exponentially, weight 1/MEAN_STEPS per step) ``(N, d)`` Å: the list follows where
            the atoms sit (a Mg-rich surface relaxes outwards by ~0.5 Å), not their thermal
            excursions, so the skin only has to hold those excursions (≈ 5σ: 1.25 Å at 600 K).
        time: t. fast_time_debt: fast time not yet integrated (``"joint"``).
        candidates, accepted: event counters. displaced: True if an atom moved more than
        skin/2 from where its neighbour list was last searched, or the list overflowed its
        capacity (the run is then invalid).
        key: this replica's PRNG key.
    """

    positions: Float[Array, "n d"]
    spins: Float[Array, " n"]
    stiffness: Float[Array, " n"]
    noise: Float[Array, "n d"]
    density: Float[Array, " n"]
    minority: Int[Array, " k"]
    neighbors: NeighborList
    mean_positions: Float[Array, "n d"]
    time: Float[Array, ""]
    fast_time_debt: Float[Array, ""]
    candidates: Int[Array, ""]
    accepted: Int[Array, ""]
    displaced: Bool[Array, ""]
    key: PRNGKeyArray

    @property
    def gaussian_state(self) -> DMDState:
        """``"gaussian"`` mode: the VG state (X*, k*, σ) the exchange rates are averaged over."""
        return DMDState(self.positions, self.stiffness, self.spins)


class SpinDiffusionSampler(eqx.Module):
    """The model and its numerical parameters (build it with :func:`spin_diffusion_sampler`)."""

    potential: Potential
    cell: Cell
    neighbors: NeighborList
    reference_positions: Float[Array, "n d"]
    bonds: Int[Array, "b 2"]
    kinetic_neighbors: Int[Array, "n z"]
    pinned: Bool[Array, " n"]
    beta: Float[Array, ""]
    tau: Float[Array, ""]
    epsilon: Float[Array, ""]
    langevin_step: Float[Array, ""]
    mode: str = eqx.field(static=True)
    rate_average: str = eqx.field(static=True)
    basin_steps: int = eqx.field(static=True)
    candidates: str = eqx.field(static=True, default="bonds")
    minority_sites: int = eqx.field(static=True, default=0)
    nonlocal_slots: int = eqx.field(static=True, default=0)
    free_energy: VGFreeEnergy | None = None
    frozen_radial: Float[Array, "n m t s s"] | None = None

    @property
    def neighbor_idx(self) -> Int[Array, "n m"]:
        return self.neighbors.idx

    @property
    def skin(self) -> float:
        """Verlet skin of the neighbour lists, Å: an atom may move skin/2 from where its
        replica's list was last searched (at the mean positions; see :class:`SamplerState`)."""
        return self.neighbors.skin

    @property
    def candidate_rate(self) -> Float[Array, ""]:
        """Λ, the uniformisation rate: B/τ (``candidates="bonds"``) or K·z/τ (``"minority"``)."""
        if self.candidates == "minority":
            return self.minority_sites * (self.kinetic_neighbors.shape[1] + self.nonlocal_slots) / self.tau
        return self.bonds.shape[0] / self.tau

    # -- energies -------------------------------------------------------------------------
    def energy(self, positions, spins) -> Float[Array, ""]:
        """V(x, σ), eV."""
        geometry = pair_geometry(positions, self.cell, self.neighbor_idx)
        return jnp.sum(site_energies_from_geometry(self.potential, geometry, spin_weights(spins)))

    def force(self, positions, spins) -> Float[Array, "n d"]:
        """−∇_x V(x, σ), eV/Å. Pair potentials: analytic row sums over the full neighbour list
        (no scatter: every bond is listed from both ends); EAM: the analytic plain-configuration
        gradient of :func:`dmdjax.pair_sums.plain_energy_gradient` (only each pair's own
        species' splines; 6× faster than ``jax.grad`` of :meth:`energy` on a 1000-atom slab)."""
        if self.potential.is_embedded:
            return -pair_sums.plain_energy_gradient(self._plain_model, positions, _species(spins))[1]
        geometry = pair_geometry(positions, self.cell, self.neighbor_idx)
        r = masked_distance(geometry.displacement, geometry.mask, 2.0 * self.potential.cutoff)
        _, slope = jax.jvp(self.potential.pair, (r,), (jnp.ones_like(r),))  # dφ_ab/dr, (N, M, 2, 2)
        weights = spin_weights(spins)
        neighbor_weights = gather(weights, self.neighbor_idx)
        dphi = jnp.einsum("na,nmab,nmb->nm", weights, slope, neighbor_weights, precision=HIGHEST)
        dphi = jnp.where(geometry.mask, dphi / r, 0.0)
        return jnp.sum(dphi[:, :, None] * geometry.displacement, axis=1)

    def swap_energy_change(self, positions, spins, i, j) -> Float[Array, ""]:
        """Δ_ij V = V(x, σ^{ij}) − V(x, σ) from the site energies of i, j and their neighbours
        (EAM: from the densities of i's and j's neighbours, :meth:`site_density`)."""
        if self.potential.is_embedded:
            return self._eam_swap(positions, spins, self.site_density(positions, spins), i, j)[0]
        return self._swap_energy_change(spins, i, j, positions)

    @property
    def _keeps_density(self) -> bool:
        """EAM in the modes that hold x between candidates: the state carries ρ_i (O(M) swaps)."""
        return self.potential.is_embedded and self.mode in ("joint", "frozen")

    @property
    def _plain_model(self) -> pair_sums.PairModel:
        """The plain (not Gaussian-averaged) pair sums over this sampler's list."""
        return pair_sums.pair_model(pair_sums.RadialAverages(self.potential, self.cell.dim), self.cell,
                                    self.neighbor_idx)

    def site_density(self, positions, spins) -> Float[Array, " n"]:
        """EAM: each site's density of its own species, ρ_i = Σ_j f_{σ_j→σ_i}(r_ij) ``(N,)``."""
        return pair_sums.plain_densities(self._plain_model, positions, _species(spins))

    def _eam_swap(self, positions, spins, density, i, j):
        """Δ_ij V of an EAM potential in O(M), and the change of the cached densities.

        Only the bonds of i and j and the densities at their neighbours change. With
        w_i, w_j the species weights before the swap (after it they trade places):

        * the rows of i and j, recomputed: ΔV_ij = Σ_{r∈{i,j}} [w'_r·Σ_l φ(r_rl) w'_l
          − w_r·Σ_l φ(r_rl) w_l] + [F_{σ'_r}(ρ'_r) − F_{σ_r}(ρ_r)] (every changed bond is in
          one of the two rows; the i–j bond's own change is zero);
        * every other site k within the cut-off of i or j: ΔF_k = F_{σ_k}(ρ_k + Δρ_k) −
          F_{σ_k}(ρ_k), Δρ_k = Σ_b (w_j − w_i)^b [f_{b→σ_k}(r_ik) − f_{b→σ_k}(r_jk)], with ρ_k
          the cached density. A site within the cut-off of i is taken from i's row (its
          distance to j computed afresh), any other from j's row: each site once.

        Returns (ΔV, sites ``(2 + 2M,)``, density changes ``(2 + 2M,)``; site index N on
        entries that change nothing).
        """
        n = spins.shape[0]
        cutoff = self.potential.cutoff
        spins = spins.astype(positions.dtype)
        weights = spin_weights(spins)
        rows = jnp.stack([i, j])
        idx = self.neighbor_idx[rows]  # (2, M)
        valid = idx < n
        safe = jnp.where(valid, idx, 0)
        own = weights[rows]  # (2, S): w_i, w_j
        swapped_own = own[::-1]
        neighbor_weights = jnp.where(valid[..., None], weights[safe], 0.0)
        swapped_neighbors = jnp.where((idx == i)[..., None], own[1], jnp.where((idx == j)[..., None], own[0],
                                                                               neighbor_weights))
        to_rows = self.cell.displacement(positions[safe], positions[rows][:, None, :])  # (2, M, d)
        distance = masked_distance(to_rows, valid, 2.0 * cutoff)
        radial = self.potential.radial(distance)  # (2, M, T, S, S)
        before = jnp.einsum("rmtbx,rmb->rtx", radial, neighbor_weights, precision=HIGHEST)
        after = jnp.einsum("rmtbx,rmb->rtx", radial, swapped_neighbors, precision=HIGHEST)
        own_density_after = jnp.sum(swapped_own * after[:, DENSITY], axis=-1)
        change = (jnp.sum(swapped_own * after[:, PAIR]) - jnp.sum(own * before[:, PAIR])
                  + jnp.sum(swapped_own * self.potential.embedding(after[:, DENSITY]))
                  - jnp.sum(own * self.potential.embedding(before[:, DENSITY])))
        # The other sites: from i's row those within the cut-off of i, from j's row the rest.
        to_other = self.cell.displacement(positions[safe], positions[rows[::-1]][:, None, :])
        other_distance = masked_distance(to_other, valid, 2.0 * cutoff)  # row i: r_jk; row j: r_ik
        from_i = jnp.stack([distance[0] < cutoff, other_distance[1] >= cutoff])
        affected = valid & (idx != i) & (idx != j) & from_i
        other_density = self.potential.density(jnp.where(jnp.arange(2)[:, None] == 0, other_distance,
                                                         2.0 * cutoff))  # f(r_jk) on i's row only
        source_change = own[1] - own[0]  # w_j − w_i: the species change at i (minus it at j)
        kernel = jnp.stack([radial[0, :, DENSITY] - other_density[0],
                            -radial[1, :, DENSITY]])  # (2, M, S_b, S_a)
        host = jnp.where(valid[..., None], weights[safe], 0.0)
        increment = jnp.einsum("b,rmba,rma->rm", source_change, kernel, host, precision=HIGHEST)
        cached = density[safe]
        host_species = host.reshape(-1, host.shape[-1])
        embed = lambda rho: jnp.sum(host_species * self.potential.embedding(
            jnp.broadcast_to(rho.reshape(-1)[:, None], host_species.shape)), axis=-1).reshape(rho.shape)
        change = change + jnp.sum(jnp.where(affected, embed(cached + increment) - embed(cached), 0.0))
        sites = jnp.concatenate([rows, jnp.where(affected, idx, n).reshape(-1)])
        increments = jnp.concatenate([own_density_after - density[rows], jnp.where(affected, increment, 0.0).reshape(-1)])
        return change, sites, increments

    def _row_radial(self, positions, rows) -> Float[Array, "r m t s s"]:
        """Radial values (φ_ab, f_{b→a}) from atoms ``rows`` to their listed neighbours
        (``positions=None``: the ``"frozen"`` table)."""
        if positions is None:
            return self.frozen_radial[rows]
        idx = self.neighbor_idx[rows]
        mask = idx < positions.shape[0]
        displacement = self.cell.displacement(positions[jnp.where(mask, idx, 0)], positions[rows][:, None, :])
        return self.potential.radial(masked_distance(displacement, mask, 2.0 * self.potential.cutoff))

    def _swap_energy_change(self, spins, i, j, positions) -> Float[Array, ""]:
        n = spins.shape[0]
        if not self.potential.is_embedded:
            # Pair potential: only the bonds of i and j change. Σ over both rows of the full
            # bond energies φ_{a_i b_k}(r_ik) (the i–j bond itself, counted twice, does not
            # change); O(M), and only the species pairs present are read.
            rows = jnp.stack([i, j])
            idx = self.neighbor_idx[rows]
            mask = idx < n
            neighbours = spins[jnp.where(mask, idx, 0)]
            swapped_neighbours = jnp.where(idx == i, spins[j], jnp.where(idx == j, spins[i], neighbours))
            own = spins[rows]
            # Species index 0 for σ = +1, 1 for σ = −1; (a, b) pairs before and after, (2, M).
            before = 2 * (own[:, None] < 0) + (neighbours < 0)
            after = 2 * (own[::-1, None] < 0) + (swapped_neighbours < 0)
            pair = self._row_radial(positions, rows)[..., 0, :, :].reshape(rows.shape + (idx.shape[1], 4))
            change = (jnp.take_along_axis(pair, after[..., None], -1)
                      - jnp.take_along_axis(pair, before[..., None], -1))[..., 0]
            return jnp.sum(jnp.where(mask, change, 0.0))
        # EAM: the embedding energies of the neighbours change too.
        spins = spins.astype(self.beta.dtype)  # the "frozen" loop's int8 spins
        rows = jnp.concatenate([jnp.stack([i, j]), self.neighbor_idx[i], self.neighbor_idx[j]])
        earlier = jnp.tril(rows[:, None] == rows[None, :], k=-1)
        first = (rows < n) & ~jnp.any(earlier, axis=1)  # each affected atom once
        rows = jnp.where(rows < n, rows, 0)
        idx = self.neighbor_idx[rows]
        radial = self._row_radial(positions, rows)
        swapped = spins.at[i].set(spins[j]).at[j].set(spins[i])
        before = assemble_site_energies(self.potential, radial, spin_weights(spins), idx, rows)
        after = assemble_site_energies(self.potential, radial, spin_weights(swapped), idx, rows)
        return jnp.sum(jnp.where(first, after - before, 0.0))

    def exchange_rates(self, positions, spins) -> Float[Array, " b"]:
        """r_ij = τ⁻¹ ½(1 − tanh(βΔ_ij V/2)) on every bond (0 where σ_i = σ_j: nothing to exchange)."""
        i, j = self.bonds[:, 0], self.bonds[:, 1]
        delta = jax.vmap(lambda a, b: self.swap_energy_change(positions, spins, a, b))(i, j)
        rate = jax.nn.sigmoid(-self.beta * delta) / self.tau
        return jnp.where(spins[i] != spins[j], rate, 0.0)

    # -- moves ----------------------------------------------------------------------------
    def _langevin(self, positions, spins, noise, key):
        force = self.force(positions, spins)
        fresh = jax.random.normal(key, positions.shape, positions.dtype)
        h = self.langevin_step
        step = h * force + jnp.sqrt(h / (2.0 * self.beta)) * (noise + fresh)
        return jnp.where(self.pinned[:, None], positions, positions + step), fresh

    def _langevin_steps(self, state: SamplerState, n_steps) -> SamplerState:
        def body(_, carry):
            positions, mean, noise, key = carry
            key, sub = jax.random.split(key)
            positions, noise = self._langevin(positions, state.spins, noise, sub)
            return positions, mean + (positions - mean) / MEAN_STEPS, noise, key

        positions, mean, noise, key = jax.lax.fori_loop(
            0, n_steps, body, (state.positions, state.mean_positions, state.noise, state.key))
        state = eqx.tree_at(lambda s: (s.positions, s.mean_positions, s.noise, s.key, s.displaced), state,
                            (positions, mean, noise, key, state.displaced | self._stale(positions)))
        if self._keeps_density:
            state = eqx.tree_at(lambda s: s.density, state, self.site_density(positions, state.spins))
        return state

    def _relax(self, state: SamplerState) -> SamplerState:
        from .relax import relax

        result = relax(self.free_energy, state.gaussian_state, self.neighbors, throw=False)
        return eqx.tree_at(lambda s: (s.positions, s.mean_positions, s.stiffness, s.displaced), state,
                           (result.positions, result.positions, result.stiffness,
                            state.displaced | self._stale(result.positions) | ~result.converged))

    def _stale(self, positions) -> Bool[Array, ""]:
        """True where the neighbour list no longer holds every pair within the cut-off at
        ``positions`` (an atom moved more than skin/2 since its search) or overflowed."""
        return (self.neighbors.max_displacement(positions) > 0.5 * self.skin) | self.neighbors.overflow

    def _on(self, neighbors: NeighborList) -> "SpinDiffusionSampler":
        """This sampler with a replica's own neighbour list."""
        return eqx.tree_at(lambda s: s.neighbors, self, neighbors)

    def _searched(self, state: SamplerState) -> SamplerState:
        """The replica's list searched again at its mean positions where they moved more than
        skin/10 since the last search (x is fixed in ``"frozen"`` mode: never)."""
        if self.mode == "frozen":
            return state
        neighbors = state.neighbors.update(state.mean_positions, trigger=0.1)
        return eqx.tree_at(lambda s: (s.neighbors, s.displaced), state,
                           (neighbors, state.displaced | neighbors.overflow))

    def _candidate(self, state: SamplerState, uniforms, move_key, due=True) -> SamplerState:
        """One candidate exchange if ``due`` (else ``state``).

        ``uniforms``: U(0, 1) draws (bond, acceptance and, with ``nonlocal_slots``, the far
        site); ``move_key``: the key of the
        basin/Gaussian sample of x (scale-separated). ``state.spins`` may be int8 (the
        ``"frozen"`` loop carries them so: a swap rewrites N bytes, not N floats).
        """
        due = counted = jnp.asarray(due)
        u_bond, u_accept = uniforms[0], uniforms[1]
        if self.mode == "scale-separated" and self.rate_average == "basin":
            # A fresh LM noise: the basin sample must not remember the last exchange.
            k_noise, k_steps = jax.random.split(move_key)
            fresh = jax.random.normal(k_noise, state.noise.shape, state.noise.dtype)
            moved = self._langevin_steps(eqx.tree_at(lambda s: (s.noise, s.key), state, (fresh, k_steps)),
                                         self.basin_steps)
            state = eqx.tree_at(lambda s: (s.positions, s.mean_positions, s.noise, s.displaced), state,
                                tuple(jnp.where(due, a, b) for a, b in ((moved.positions, state.positions),
                                                                        (moved.mean_positions, state.mean_positions),
                                                                        (moved.noise, state.noise),
                                                                        (moved.displaced, state.displaced))))
        positions = state.positions
        if self.mode == "scale-separated" and self.rate_average == "gaussian":
            width = jnp.sqrt(1.0 / (self.beta * state.stiffness))[:, None]
            sample = positions + width * jax.random.normal(move_key, positions.shape, positions.dtype)
            positions = jnp.where(self.pinned[:, None], positions, sample)
        n = state.spins.shape[0]
        if self.candidates == "minority":
            # A σ = −1 site and one of its z bond slots: every bond from a σ = −1 site to a
            # σ = +1 site once (the others exchange nothing), at rate Λ/(K·(z + w)) = 1/τ each.
            # The w non-local slots pick any site uniformly: rate w/(Nτ) per (σ = −1, σ = +1)
            # pair, the same both ways, so detailed balance holds for the added moves too.
            z, w = self.kinetic_neighbors.shape[1], self.nonlocal_slots
            draw = jnp.minimum((u_bond * (self.minority_sites * (z + w))).astype(jnp.int32),
                               self.minority_sites * (z + w) - 1)
            entry, slot = draw // (z + w), draw % (z + w)
            i = state.minority[entry]
            j = self.kinetic_neighbors[i, jnp.minimum(slot, z - 1)]
            if w:
                far = jnp.minimum((uniforms[2] * n).astype(jnp.int32), n - 1)
                j = jnp.where(slot < z, j, far)
            due = due & (j < n)
            j = jnp.where(j < n, j, self.kinetic_neighbors[i, 0])  # an empty slot: any bond, not exchanged
        else:
            bond = jnp.minimum((u_bond * self.bonds.shape[0]).astype(jnp.int32), self.bonds.shape[0] - 1)
            i, j = self.bonds[bond, 0], self.bonds[bond, 1]
        if self._keeps_density:
            x = self.reference_positions if self.mode == "frozen" else positions
            delta, sites, increments = self._eam_swap(x, state.spins, state.density, i, j)
        else:  # "frozen": x is the lattice, whose radial values are tabulated (positions=None).
            delta = self._swap_energy_change(state.spins, i, j, None if self.mode == "frozen" else positions)
        spin_i, spin_j = state.spins[i], state.spins[j]
        accept = due & (spin_i != spin_j) & (u_accept < jax.nn.sigmoid(-self.beta * delta))
        # The exchange flips both spins (they differ). Under vmap XLA:CPU runs a scatter as
        # a serial loop over the replicas (~22 ns per replica); a select over the sites costs
        # ~0.13 ns per site and replica (int8, 64-site benchmark): select up to 128 sites.
        if state.spins.shape[0] <= _SELECT_SWAP_MAX_SITES:
            site = jnp.arange(state.spins.shape[0])
            spins = jnp.where(accept & ((site == i) | (site == j)), -state.spins, state.spins)
        else:
            spins = state.spins.at[jnp.stack([i, j])].multiply(jnp.where(accept, -1, 1).astype(state.spins.dtype))
        if self._keeps_density:
            density = state.density.at[sites].add(jnp.where(accept, increments, 0.0), mode="drop")
            state = eqx.tree_at(lambda s: s.density, state, density)
        if self.candidates == "minority":
            state = eqx.tree_at(lambda s: s.minority, state,
                                state.minority.at[entry].set(jnp.where(accept, j, i)))
        state = eqx.tree_at(
            lambda s: (s.spins, s.candidates, s.accepted), state,
            (spins, state.candidates + counted.astype(state.candidates.dtype),
             state.accepted + accept.astype(state.accepted.dtype)))
        if self.mode == "scale-separated" and self.rate_average == "gaussian":
            state = jax.lax.cond(accept, lambda s: self._relax(s), lambda s: s, state)  # a bound method would be hashed
        return state

    @property
    def _candidate_block(self) -> int:
        """Candidates whose random numbers are drawn together (one PRNG call per block).

        Under ``vmap`` every replica runs every slot of a block (the ones past its count
        masked), so the block is small where an interval has few candidates (one per
        Langevin step in ``"joint"``) and where a candidate is costly (a basin sample or a
        relaxation in ``"scale-separated"``): 16 in ``"frozen"``, 1 otherwise.
        """
        return 16 if self.mode == "frozen" else 1

    # -- the init / advance pair ------------------------------------------------------------
    def init(self, key: PRNGKeyArray, positions: Float[Array, "n d"], spins: Float[Array, " n"]) -> SamplerState:
        """A replica at time 0 (``"gaussian"`` mode relaxes (X, k) at s = σ first)."""
        dtype = positions.dtype
        key, k_noise = jax.random.split(key)
        state = SamplerState(
            positions=positions, spins=spins.astype(dtype), stiffness=jnp.ones(spins.shape, dtype),
            noise=jax.random.normal(k_noise, positions.shape, dtype),
            density=(self.site_density(self.reference_positions if self.mode == "frozen" else positions, spins)
                     if self._keeps_density else jnp.zeros(spins.shape, dtype)),
            minority=self._minority(spins), neighbors=self.neighbors, mean_positions=positions,
            time=jnp.zeros((), dtype),
            fast_time_debt=jnp.zeros((), dtype), candidates=jnp.zeros((), jnp.int32),
            accepted=jnp.zeros((), jnp.int32), displaced=jnp.zeros((), bool), key=key)
        state = self._searched(state)  # the list covers these positions
        if self.mode == "scale-separated" and self.rate_average == "gaussian":
            stiffness = self.free_energy.initial_stiffness(positions, state.spins, state.neighbors)
            state = self._relax(eqx.tree_at(lambda s: s.stiffness, state, stiffness))
        return state

    def _minority(self, spins) -> Int[Array, " k"]:
        """``candidates="minority"``: the σ = −1 sites (an error inside jit if there are not
        ``minority_sites`` of them); empty otherwise."""
        if self.candidates != "minority":
            return jnp.zeros((0,), jnp.int32)
        count = jnp.sum(spins < 0)
        spins = eqx.error_if(spins, count != self.minority_sites,
                             "candidates='minority': the spins do not have minority_sites sites of σ = −1")
        return jnp.nonzero(spins < 0, size=self.minority_sites, fill_value=spins.shape[0])[0].astype(jnp.int32)

    def _exchanges(self, state: SamplerState, duration) -> SamplerState:
        """The candidate exchanges of an interval of length ``duration`` in which x is held:
        Poisson(Λ·duration) of them, in blocks of :attr:`_candidate_block` candidates sharing
        one PRNG call (``"frozen"``: the spins carried as int8 meanwhile)."""
        block = self._candidate_block
        moves = self.mode == "scale-separated"
        key, k_count = jax.random.split(state.key)
        rate = self.candidate_rate * jnp.maximum(duration, 0.0)
        count = jax.random.poisson(k_count, rate, dtype=jnp.int32)

        def run_block(carry):
            done, s = carry
            key, k_uniform, k_move = jax.random.split(s.key, 3)
            uniforms = jax.random.uniform(k_uniform, (block, 3 if self.nonlocal_slots else 2), s.time.dtype)
            move_keys = jax.random.split(k_move, block) if moves else None

            def slot(index, s):
                return self._candidate(s, uniforms[index], move_keys[index] if moves else None,
                                       due=done + index < count)

            return done + block, jax.lax.fori_loop(0, block, slot, eqx.tree_at(lambda s: s.key, s, key))

        spins = state.spins
        packed = state.spins.astype(jnp.int8) if self.mode == "frozen" else state.spins
        start = eqx.tree_at(lambda s: (s.spins, s.key), state, (packed, key))
        _, state = jax.lax.while_loop(lambda carry: carry[0] < count, run_block, (jnp.zeros((), jnp.int32), start))
        return eqx.tree_at(lambda s: s.spins, state, state.spins.astype(spins.dtype))

    def advance(self, state: SamplerState, time) -> SamplerState:
        """Run one replica to ``time`` (≥ ``state.time``; at most 2³¹ − 1 candidates per call).

        ``"joint"``: whole Langevin steps h of fast time (ε h of time each; the remainder is
        carried to the next call), each followed by the candidates of its interval (Lie–Trotter
        splitting), then those of the remainder; the step count is the same for every replica,
        so a vmapped loop wastes nothing on it. Other modes: the candidates of
        (``state.time``, ``time``].
        """
        return self._advance(state, time, batched=False)

    def _advance(self, state: SamplerState, time, batched: bool) -> SamplerState:
        """:meth:`advance` of one replica, or (``batched``) of replicas stacked on a leading
        axis that share their time and fast-time debt (as :func:`init_replicas` makes them):
        the Langevin loop then runs outside the vmap, so its step count and the list checks
        are plain scalars (a cond, not a select that would search every list every step)."""
        each = (lambda f: jax.vmap(f)) if batched else (lambda f: f)
        first = (lambda a: a[0]) if batched else (lambda a: a)
        if batched:
            shared = jnp.all(state.time == state.time[0]) & jnp.all(state.fast_time_debt == state.fast_time_debt[0])
            checked = eqx.error_if(state.time, ~shared, "advance_replicas: the replicas do not share their time "
                                   "and fast-time debt; advance each with SpinDiffusionSampler.advance")
            state = eqx.tree_at(lambda s: s.time, state, checked)
        time = jnp.asarray(time, state.time.dtype)
        duration = time - first(state.time)
        searched = each(lambda s: self._searched(s))
        state = searched(state)
        if self.mode != "joint":
            state = each(lambda s: self._on(s.neighbors)._exchanges(s, duration))(state)
            return eqx.tree_at(lambda s: s.time, state, jnp.broadcast_to(time, state.time.shape))
        h, epsilon = self.langevin_step, self.epsilon
        owed = first(state.fast_time_debt)  # fast time since the last step
        debt = owed + duration / epsilon
        n_steps = jnp.floor(debt / h * (1 + 1e-12)).astype(jnp.int32)

        def step_and_exchanges(s, interval):
            model = self._on(s.neighbors)
            return model._exchanges(model._langevin_steps(s, 1), interval)

        def body(step, s):
            s = jax.lax.cond(step % REBUILD_EVERY == REBUILD_EVERY - 1, searched, lambda s: s, s)
            # The first step closes the interval begun before this call.
            interval = jnp.where(step == 0, h - owed, h) * epsilon
            return each(lambda s: step_and_exchanges(s, interval))(s)

        state = jax.lax.fori_loop(0, n_steps, body, state)
        remainder = jnp.where(n_steps > 0, duration - (n_steps * h - owed) * epsilon, duration)
        state = each(lambda s: self._on(s.neighbors)._exchanges(s, remainder))(state)
        return eqx.tree_at(lambda s: (s.time, s.fast_time_debt), state,
                           (jnp.broadcast_to(time, state.time.shape),
                            jnp.broadcast_to(jnp.maximum(debt - n_steps * h, 0.0), state.time.shape)))


def spin_diffusion_sampler(
    potential: Potential,
    positions: Float[Array, "n d"],
    cell: Cell,
    neighbors: NeighborList,
    *,
    temperature: float,
    tau: float = 1.0,
    kinetic_cutoff: float,
    mode: str = "joint",
    epsilon: float = 0.01,
    langevin_step: float = 1e-3,
    rate_average: str = "basin",
    basin_steps: int = 20,
    pinned=None,
    pinned_species=None,
    quadrature: str = "gauss-hermite",
    candidates: str = "bonds",
    minority_sites: int | None = None,
    nonlocal_slots: int = 0,
) -> SpinDiffusionSampler:
    """Build a sampler (see the module docstring for the model).

    Arguments:
        potential: a two-species potential (σ = +1 is ``potential.species[0]``).
        positions: the lattice ``(N, d)`` Å: it fixes the kinetic bonds. In ``"frozen"`` mode
            x stays here.
        neighbors: a list at ``positions`` with the potential's cut-off; every replica starts
            with it and searches it again (same capacity) at its atoms' mean positions where
            these moved (skin/10). A replica whose list overflows, or whose atoms move more than
            skin/2 from where it was searched, is flagged ``displaced`` and :func:`sample` raises.
        temperature: K. tau: the exchange time scale τ.
        kinetic_cutoff: exchange bonds are pairs closer than this (Å) in ``positions``.
        mode: ``"joint"``, ``"scale-separated"`` or ``"frozen"``.
        epsilon: ε, fast/slow time-scale ratio (``"joint"``).
        langevin_step: fast Langevin step h (``"joint"`` and ``"basin"``), in the units of
            ε⁻¹·time; stability needs h·λ_max(∇²V) < 2 (λ_max ≤ 4κ_max for
            a chain of springs κ, in eV/Å²).
        rate_average: ``"basin"`` or ``"gaussian"`` (``"scale-separated"``).
        basin_steps: Langevin steps at the current σ before each candidate (``"basin"``).
        pinned: ``(N,)`` atoms that do not move. pinned_species: ``(N,)`` sites whose spin
            never exchanges.
        candidates: how the uniformised process draws a candidate (the same law either way):
            ``"bonds"`` — one of the B kinetic bonds, Λ = B/τ; ``"minority"`` — one of the
            ``minority_sites`` σ = −1 sites and one of its z bond slots (z the largest kinetic
            coordination), Λ = K·z/τ: a dilute solute's candidates only, B/(K·z) times fewer
            (24× at 2 % in fcc), every one of them a bond that can exchange unless its
            neighbour is a solute too or the slot is empty (a surface site).
        minority_sites: K, the number of σ = −1 sites (``candidates="minority"``; every
            replica's spins must have exactly K).
        nonlocal_slots: w ≥ 0 (``candidates="minority"``): each σ = −1 site also attempts w
            exchanges per τ with a uniformly drawn site anywhere, at the same detailed-balance
            acceptance. They keep the stationary law (the equilibrium) but are not the
            kinetics: for equilibrium sampling only, where a solute would otherwise need to
            diffuse across the system.

    Raises:
        ValueError: naming the bad value (mode, rate average, non-positive parameters, a
            potential without exactly two species, no exchange bonds).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if rate_average not in RATE_AVERAGES:
        raise ValueError(f"rate_average must be one of {RATE_AVERAGES}; got {rate_average!r}")
    if potential.n_species != 2:
        raise ValueError(f"spin exchange needs a two-species potential; {type(potential).__name__} has "
                         f"species {list(potential.species)}")
    for name, value in (("temperature", temperature), ("tau", tau), ("epsilon", epsilon),
                        ("langevin_step", langevin_step), ("kinetic_cutoff", kinetic_cutoff)):
        _validate.positive(value, name, "")
    if candidates not in CANDIDATES:
        raise ValueError(f"candidates must be one of {CANDIDATES}; got {candidates!r}")
    if candidates == "minority" and not (isinstance(minority_sites, (int, np.integer)) and minority_sites >= 1):
        raise ValueError(f"candidates='minority' needs minority_sites, a positive integer; got {minority_sites!r}")
    if not (isinstance(nonlocal_slots, (int, np.integer)) and nonlocal_slots >= 0):
        raise ValueError(f"nonlocal_slots must be a non-negative integer; got {nonlocal_slots!r}")
    if nonlocal_slots and candidates != "minority":
        raise ValueError(f"nonlocal_slots={nonlocal_slots} needs candidates='minority'")
    if not (isinstance(basin_steps, int) and basin_steps >= 1):
        raise ValueError(f"basin_steps must be a positive integer; got {basin_steps!r}")
    n = positions.shape[0]
    pinned = np.zeros(n, bool) if pinned is None else np.asarray(pinned, bool)
    pinned_species = np.zeros(n, bool) if pinned_species is None else np.asarray(pinned_species, bool)
    graph = kinetics.bond_graph(positions, cell, neighbors, kinetic_cutoff, pinned_species=pinned_species)
    idx, mask = np.asarray(graph.idx), np.asarray(graph.mask)
    rows, slots = np.nonzero(mask)
    pairs = np.stack([rows, idx[rows, slots]], axis=1)
    bonds = np.unique(pairs[pairs[:, 0] < pairs[:, 1]], axis=0)
    if bonds.shape[0] == 0:
        raise ValueError(f"no exchange bonds within kinetic_cutoff={kinetic_cutoff} Å between free-species sites")
    coordination = np.bincount(rows, minlength=n)
    kinetic_neighbors = np.full((n, int(coordination.max())), n, np.int32)
    order = np.argsort(rows, kind="stable")
    slot = np.arange(rows.size) - np.repeat(np.cumsum(coordination) - coordination, coordination)
    kinetic_neighbors[rows[order], slot] = idx[rows, slots][order]
    dtype = positions.dtype
    free_energy = None
    if mode == "scale-separated" and rate_average == "gaussian":
        free_energy = VGFreeEnergy(potential, cell, temperature, n, pinned=pinned, pinned_species=np.ones(n, bool),
                                   quadrature=quadrature)
    return SpinDiffusionSampler(
        potential=potential, cell=cell, neighbors=neighbors, reference_positions=positions,
        bonds=jnp.asarray(bonds, jnp.int32), kinetic_neighbors=jnp.asarray(kinetic_neighbors), pinned=jnp.asarray(pinned),
        beta=jnp.asarray(beta_from_temperature(temperature), dtype), tau=jnp.asarray(tau, dtype),
        epsilon=jnp.asarray(epsilon, dtype), langevin_step=jnp.asarray(langevin_step, dtype),
        mode=mode, rate_average=rate_average, basin_steps=basin_steps, free_energy=free_energy,
        candidates=candidates, minority_sites=int(minority_sites) if candidates == "minority" else 0,
        nonlocal_slots=int(nonlocal_slots),
        # "frozen": x never moves, so the radial values of every listed pair are a table
        # (pair potentials; EAM keeps each site's density instead, SamplerState.density).
        frozen_radial=(radial_from_geometry(potential, pair_geometry(positions, cell, neighbors.idx))
                       if mode == "frozen" and not potential.is_embedded else None))


class SamplerTrajectory(eqx.Module):
    """Replica averages on a time grid (the DMD trajectory format plus standard errors).

    Attributes:
        time: ``(T,)``; order_parameter: E[σ_i(t)] ``(T, N)``; order_parameter_error: its
        standard error over replicas ``(T, N)``; positions: replica-mean x ``(T, N, d)`` Å;
        candidates, accepted: events per replica summed over replicas ``(T,)``;
        parameters: a dict.
    """

    time: Float[Array, " t"]
    order_parameter: Float[Array, "t n"]
    order_parameter_error: Float[Array, "t n"]
    positions: Float[Array, "t n d"]
    candidates: Int[Array, " t"]
    accepted: Int[Array, " t"]
    parameters: dict = eqx.field(static=True)

    def save(self, path: str | os.PathLike):
        """Write ``.npz``: the arrays above by name and ``parameters`` as JSON."""
        names = ("time", "order_parameter", "order_parameter_error", "positions", "candidates", "accepted")
        return io.save_npz(path, {name: np.asarray(getattr(self, name)) for name in names}, self.parameters)


@eqx.filter_jit
def init_replicas(sampler, keys, positions, spins):
    """``sampler.init`` over a batch of replicas (compiled): keys ``(B, 2)``, positions
    ``(B, N, d)``, spins ``(B, N)``."""
    return jax.vmap(sampler.init)(keys, positions, spins)


@eqx.filter_jit
def advance_replicas(sampler, states, time):
    """``sampler.advance`` of every replica in ``states`` (leading axis B) to ``time`` (compiled).
    The replicas must share their time (as :func:`init_replicas` and this function keep them):
    one Langevin step count for all, the loop outside the vmap."""
    return sampler._advance(states, time, batched=True)


def sample(
    sampler: SpinDiffusionSampler,
    key: PRNGKeyArray,
    spins,
    save_times: Sequence[float],
    *,
    n_replicas: int,
    positions=None,
    output: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> SamplerTrajectory:
    """Run ``n_replicas`` independent replicas and average σ over them on ``save_times``.

    Arguments:
        sampler: from :func:`spin_diffusion_sampler`.
        key: PRNG key (split into one key per replica).
        spins: initial σ, ``(N,)`` shared or ``(R, N)`` per replica, entries ±1.
        save_times: increasing, starting at 0.
        positions: initial x (default the sampler's lattice; not in ``"frozen"`` mode).
        output: ``.npz`` path, rewritten (atomically) after every interval.
        progress: a progress bar over the intervals.

    Raises:
        ValueError: bad spins or times. RuntimeError: a replica's atoms moved beyond the
            neighbour list's skin/2 (build the sampler with a larger skin).
    """
    if output is not None and os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{str(output)!r} exists: pass overwrite=True to replace it")
    times = np.asarray(save_times, dtype=float)
    dtype = sampler.reference_positions.dtype
    parameters = {"model": "spin-diffusion", "mode": sampler.mode, "candidates": sampler.candidates,
                  "nonlocal_slots": sampler.nonlocal_slots,
                  "rate_average": sampler.rate_average if sampler.mode == "scale-separated" else None,
                  "basin_steps": sampler.basin_steps, "temperature": float(temperature_from_beta(sampler.beta)),
                  "tau": float(sampler.tau), "epsilon": float(sampler.epsilon),
                  "langevin_step": float(sampler.langevin_step), "n_bonds": int(sampler.bonds.shape[0]),
                  "n_replicas": n_replicas, "n_sites": sampler.reference_positions.shape[0],
                  "dtype": jnp.dtype(dtype).name}
    record = []
    for index, states in replica_states(sampler, key, spins, save_times, n_replicas=n_replicas,
                                        positions=positions, progress=progress):
        if index == 0:
            parameters["devices"] = len(states.spins.sharding.device_set)
        record.append(_summary(states))
        if output is not None and index > 0:
            _trajectory(times[: index + 1], record, parameters).save(output)
    return _trajectory(times, record, parameters)


def replica_states(sampler: SpinDiffusionSampler, key: PRNGKeyArray, spins, save_times: Sequence[float], *,
                   n_replicas: int, positions=None, progress: bool = False, label: str | None = None):
    """The replicas of :func:`sample` (same arguments), yielded as ``(index, states)`` at every
    save time (index 0: the initial states; ``states`` a batched :class:`SamplerState`), for
    callers that keep per-replica observables (time averages with replica standard errors)."""
    times = np.asarray(save_times, dtype=float)
    if times.ndim != 1 or times.size < 2 or times[0] != 0 or np.any(np.diff(times) <= 0):
        raise ValueError(f"save_times must start at 0 and increase; got {times.tolist()}")
    expected = float(sampler.candidate_rate) * times[-1]  # candidates per replica (int32 counters)
    if expected + 10 * np.sqrt(expected) >= 2**31 - 1:
        raise ValueError(f"save_times up to {times[-1]:g} mean {expected:.3g} candidate exchanges per replica "
                         f"(Λ = {float(sampler.candidate_rate):g} per unit time), beyond the 2³¹ − 1 the counters hold; "
                         "sample shorter runs")
    if not (isinstance(n_replicas, int) and n_replicas >= 1):
        raise ValueError(f"n_replicas must be a positive integer; got {n_replicas!r}")
    dtype = sampler.reference_positions.dtype
    n = sampler.reference_positions.shape[0]
    spins = np.asarray(spins, dtype=float)
    if spins.shape not in ((n,), (n_replicas, n)) or not np.all(np.isin(spins, (-1.0, 1.0))):
        bad = spins[~np.isin(spins, (-1.0, 1.0))]
        raise ValueError(f"spins must be ±1 with shape ({n},) or ({n_replicas}, {n}); got shape {spins.shape}"
                         + (f" and value {float(bad.flat[0])!r}" if bad.size else ""))
    if sampler.candidates == "minority":
        counts = np.unique(np.sum(spins < 0, axis=-1))
        if counts.tolist() != [sampler.minority_sites]:
            raise ValueError(f"candidates='minority' with minority_sites={sampler.minority_sites}: the spins have "
                             f"{counts.tolist()} sites of σ = −1")
    spins = jnp.broadcast_to(jnp.asarray(spins, dtype), (n_replicas, n))
    if positions is not None and sampler.mode == "frozen":
        raise ValueError("positions cannot be given in 'frozen' mode: x is the sampler's lattice; build the "
                         "sampler at the positions you want")
    x0 = sampler.reference_positions if positions is None else jnp.asarray(positions, dtype)
    x0 = jnp.broadcast_to(x0, (n_replicas,) + sampler.reference_positions.shape)
    keys = jax.random.split(key, n_replicas)
    sharding = batch_sharding(n_replicas, "replica")
    if sharding is not None:
        keys, spins, x0 = (jax.device_put(a, sharding) for a in (keys, spins, x0))
    states = init_replicas(sampler, keys, x0, spins)
    yield 0, states
    intervals = range(1, times.size)
    intervals = track(intervals, label or f"spin-diffusion ({n_replicas} replicas)", "interval", enabled=progress)
    for index in intervals:
        states = advance_replicas(sampler, states, jnp.asarray(times[index], dtype))
        if bool(jnp.any(states.displaced)):
            raise RuntimeError(
                f"spin-diffusion: in ({times[index - 1]:g}, {times[index]:g}] an atom of replica(s) "
                f"{np.flatnonzero(np.asarray(states.displaced))[:10].tolist()} moved more than skin/2 = "
                f"{sampler.skin / 2:g} Å from where its neighbour list was last searched, or the list overflowed its "
                "capacity (or a Gaussian-mode relaxation failed); build the sampler's list with a larger skin "
                "or capacity_multiplier")
        yield index, states


def _summary(states: SamplerState):
    r = states.spins.shape[0]
    spins = np.asarray(states.spins)
    error = spins.std(axis=0, ddof=1) / np.sqrt(r) if r > 1 else np.full(spins.shape[1], np.nan)
    return (spins.mean(axis=0), error, np.asarray(states.positions).mean(axis=0),
            int(np.asarray(states.candidates).sum()), int(np.asarray(states.accepted).sum()))


def _trajectory(times, record, parameters) -> SamplerTrajectory:
    mean, error, positions, candidates, accepted = (np.stack(items) for items in zip(*record))
    arrays = (np.asarray(times), mean, error, positions, candidates, accepted)
    return SamplerTrajectory(*(jax.device_put(a) for a in arrays), parameters)  # no per-length device compiles
