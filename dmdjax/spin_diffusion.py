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
  Δ_ij V is computed from the site energies of i, j and their neighbours only. Nothing a
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

from . import _validate, io, kinetics
from .cell import Cell
from .energy import (site_energies_from_geometry, assemble_site_energies, masked_distance, pair_geometry,
                     radial_from_geometry)
from .ensemble import batch_sharding
from ._precision import HIGHEST
from .free_energy import VGFreeEnergy
from .neighbors import NeighborList, gather
from .potentials import Potential
from .progress import track
from .state import DMDState
from .units import beta_from_temperature, temperature_from_beta

MODES = ("joint", "scale-separated", "frozen")
RATE_AVERAGES = ("basin", "gaussian")
_SELECT_SWAP_MAX_SITES = 128  # see SpinDiffusionSampler._candidate


def spin_weights(spins: Float[Array, " n"]) -> Float[Array, "n 2"]:
    """One-hot species weights of spins: σ = +1 → species 0, σ = −1 → species 1."""
    return jnp.stack([(1 + spins) / 2, (1 - spins) / 2], axis=-1)


class SamplerState(eqx.Module):
    """One replica.

    Attributes:
        positions: x ``(N, d)`` Å (in ``"gaussian"`` mode: the VG mean X*).
        spins: σ ``(N,)`` (±1, in the dtype of the positions).
        stiffness: k* ``(N,)`` eV/Å² (``"gaussian"`` mode; ones otherwise).
        noise: the Leimkuhler–Matthews noise ξ_n ``(N, d)``.
        time: t. fast_time_debt: fast time not yet integrated (``"joint"``).
        candidates, accepted: event counters. displaced: True if an atom moved more than
        skin/2 from where the neighbour list was built (the run is then invalid).
        key: this replica's PRNG key.
    """

    positions: Float[Array, "n d"]
    spins: Float[Array, " n"]
    stiffness: Float[Array, " n"]
    noise: Float[Array, "n d"]
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
    pinned: Bool[Array, " n"]
    beta: Float[Array, ""]
    tau: Float[Array, ""]
    epsilon: Float[Array, ""]
    langevin_step: Float[Array, ""]
    mode: str = eqx.field(static=True)
    rate_average: str = eqx.field(static=True)
    basin_steps: int = eqx.field(static=True)
    free_energy: VGFreeEnergy | None = None
    frozen_radial: Float[Array, "n m t s s"] | None = None

    @property
    def neighbor_idx(self) -> Int[Array, "n m"]:
        return self.neighbors.idx

    @property
    def skin(self) -> float:
        """Verlet skin of the (never rebuilt) neighbour list, Å: atoms may move skin/2."""
        return self.neighbors.skin

    @property
    def candidate_rate(self) -> Float[Array, ""]:
        """Λ = B/τ, the uniformisation rate."""
        return self.bonds.shape[0] / self.tau

    # -- energies -------------------------------------------------------------------------
    def energy(self, positions, spins) -> Float[Array, ""]:
        """V(x, σ), eV."""
        geometry = pair_geometry(positions, self.cell, self.neighbor_idx)
        return jnp.sum(site_energies_from_geometry(self.potential, geometry, spin_weights(spins)))

    def force(self, positions, spins) -> Float[Array, "n d"]:
        """−∇_x V(x, σ), eV/Å. Pair potentials: analytic row sums over the full neighbour list
        (no scatter: every bond is listed from both ends); EAM: ``jax.grad``."""
        if self.potential.is_embedded:
            return -jax.grad(self.energy)(positions, spins)
        geometry = pair_geometry(positions, self.cell, self.neighbor_idx)
        r = masked_distance(geometry.displacement, geometry.mask, 2.0 * self.potential.cutoff)
        _, slope = jax.jvp(self.potential.pair, (r,), (jnp.ones_like(r),))  # dφ_ab/dr, (N, M, 2, 2)
        weights = spin_weights(spins)
        neighbor_weights = gather(weights, self.neighbor_idx)
        dphi = jnp.einsum("na,nmab,nmb->nm", weights, slope, neighbor_weights, precision=HIGHEST)
        dphi = jnp.where(geometry.mask, dphi / r, 0.0)
        return jnp.sum(dphi[:, :, None] * geometry.displacement, axis=1)

    def swap_energy_change(self, positions, spins, i, j) -> Float[Array, ""]:
        """Δ_ij V = V(x, σ^{ij}) − V(x, σ) from the site energies of i, j and their neighbours."""
        return self._swap_energy_change(spins, i, j, positions)

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
            positions, noise, key = carry
            key, sub = jax.random.split(key)
            positions, noise = self._langevin(positions, state.spins, noise, sub)
            return positions, noise, key

        positions, noise, key = jax.lax.fori_loop(0, n_steps, body, (state.positions, state.noise, state.key))
        moved = jnp.max(jnp.abs(positions - self.reference_positions)) > 0.5 * self.skin
        return eqx.tree_at(lambda s: (s.positions, s.noise, s.key, s.displaced), state,
                           (positions, noise, key, state.displaced | moved))

    def _relax(self, state: SamplerState) -> SamplerState:
        from .relax import relax

        result = relax(self.free_energy, state.gaussian_state, self.neighbors, throw=False)
        moved = jnp.max(jnp.abs(result.positions - self.reference_positions)) > 0.5 * self.skin
        return eqx.tree_at(lambda s: (s.positions, s.stiffness, s.displaced), state,
                           (result.positions, result.stiffness, state.displaced | moved | ~result.converged))

    def _candidate(self, state: SamplerState, uniforms, move_key, due=True) -> SamplerState:
        """One candidate exchange if ``due`` (else ``state``).

        ``uniforms``: two U(0, 1) draws (bond, acceptance); ``move_key``: the key of the
        basin/Gaussian sample of x (scale-separated). ``state.spins`` may be int8 (the
        ``"frozen"`` loop carries them so: a swap rewrites N bytes, not N floats).
        """
        due = jnp.asarray(due)
        u_bond, u_accept = uniforms[0], uniforms[1]
        if self.mode == "scale-separated" and self.rate_average == "basin":
            # A fresh LM noise: the basin sample must not remember the last exchange.
            k_noise, k_steps = jax.random.split(move_key)
            fresh = jax.random.normal(k_noise, state.noise.shape, state.noise.dtype)
            moved = self._langevin_steps(eqx.tree_at(lambda s: (s.noise, s.key), state, (fresh, k_steps)),
                                         self.basin_steps)
            state = eqx.tree_at(lambda s: (s.positions, s.noise, s.displaced), state,
                                tuple(jnp.where(due, a, b) for a, b in ((moved.positions, state.positions),
                                                                        (moved.noise, state.noise),
                                                                        (moved.displaced, state.displaced))))
        positions = state.positions
        if self.mode == "scale-separated" and self.rate_average == "gaussian":
            width = jnp.sqrt(1.0 / (self.beta * state.stiffness))[:, None]
            sample = positions + width * jax.random.normal(move_key, positions.shape, positions.dtype)
            positions = jnp.where(self.pinned[:, None], positions, sample)
        bond = jnp.minimum((u_bond * self.bonds.shape[0]).astype(jnp.int32), self.bonds.shape[0] - 1)
        i, j = self.bonds[bond, 0], self.bonds[bond, 1]
        # "frozen": x is the lattice, whose radial values are tabulated (positions=None).
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
        state = eqx.tree_at(
            lambda s: (s.spins, s.candidates, s.accepted), state,
            (spins, state.candidates + due.astype(state.candidates.dtype),
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
            noise=jax.random.normal(k_noise, positions.shape, dtype), time=jnp.zeros((), dtype),
            fast_time_debt=jnp.zeros((), dtype), candidates=jnp.zeros((), jnp.int32),
            accepted=jnp.zeros((), jnp.int32), displaced=jnp.zeros((), bool), key=key)
        if self.mode == "scale-separated" and self.rate_average == "gaussian":
            stiffness = self.free_energy.initial_stiffness(positions, state.spins, self.neighbors)
            state = self._relax(eqx.tree_at(lambda s: s.stiffness, state, stiffness))
        return state

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
            uniforms = jax.random.uniform(k_uniform, (block, 2), s.time.dtype)
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
        time = jnp.asarray(time, state.time.dtype)
        duration = time - state.time
        if self.mode != "joint":
            state = self._exchanges(state, duration)
            return eqx.tree_at(lambda s: s.time, state, time)
        h, epsilon = self.langevin_step, self.epsilon
        owed = state.fast_time_debt  # fast time since the last step
        debt = owed + duration / epsilon
        n_steps = jnp.floor(debt / h * (1 + 1e-12)).astype(jnp.int32)

        def body(step, s):
            s = self._langevin_steps(s, 1)
            # The first step closes the interval begun before this call.
            return self._exchanges(s, jnp.where(step == 0, h - owed, h) * epsilon)

        state = jax.lax.fori_loop(0, n_steps, body, state)
        remainder = jnp.where(n_steps > 0, duration - (n_steps * h - owed) * epsilon, duration)
        state = self._exchanges(state, remainder)
        return eqx.tree_at(lambda s: (s.time, s.fast_time_debt), state,
                           (time, jnp.maximum(debt - n_steps * h, 0.0)))


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
) -> SpinDiffusionSampler:
    """Build a sampler (see the module docstring for the model).

    Arguments:
        potential: a two-species potential (σ = +1 is ``potential.species[0]``).
        positions: the lattice ``(N, d)`` Å: it fixes the kinetic bonds and the neighbour
            list, which is not rebuilt; a replica whose atoms move more than skin/2 from
            here is flagged ``displaced`` and :func:`sample` raises. In ``"frozen"`` mode x
            stays here.
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
    dtype = positions.dtype
    free_energy = None
    if mode == "scale-separated" and rate_average == "gaussian":
        free_energy = VGFreeEnergy(potential, cell, temperature, n, pinned=pinned, pinned_species=np.ones(n, bool),
                                   quadrature=quadrature)
    return SpinDiffusionSampler(
        potential=potential, cell=cell, neighbors=neighbors, reference_positions=positions,
        bonds=jnp.asarray(bonds, jnp.int32), pinned=jnp.asarray(pinned),
        beta=jnp.asarray(beta_from_temperature(temperature), dtype), tau=jnp.asarray(tau, dtype),
        epsilon=jnp.asarray(epsilon, dtype), langevin_step=jnp.asarray(langevin_step, dtype),
        mode=mode, rate_average=rate_average, basin_steps=basin_steps, free_energy=free_energy,
        # "frozen": x never moves, so the radial values of every listed pair are a table.
        frozen_radial=(radial_from_geometry(potential, pair_geometry(positions, cell, neighbors.idx))
                       if mode == "frozen" else None))


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
    """``sampler.advance`` of every replica in ``states`` (leading axis B) to ``time`` (compiled)."""
    return jax.vmap(sampler.advance, in_axes=(0, None))(states, time)


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
    if output is not None and os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{str(output)!r} exists: pass overwrite=True to replace it")
    dtype = sampler.reference_positions.dtype
    n = sampler.reference_positions.shape[0]
    spins = np.asarray(spins, dtype=float)
    if spins.shape not in ((n,), (n_replicas, n)) or not np.all(np.isin(spins, (-1.0, 1.0))):
        bad = spins[~np.isin(spins, (-1.0, 1.0))]
        raise ValueError(f"spins must be ±1 with shape ({n},) or ({n_replicas}, {n}); got shape {spins.shape}"
                         + (f" and value {float(bad.flat[0])!r}" if bad.size else ""))
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
    parameters = {"model": "spin-diffusion", "mode": sampler.mode,
                  "rate_average": sampler.rate_average if sampler.mode == "scale-separated" else None,
                  "basin_steps": sampler.basin_steps, "temperature": float(temperature_from_beta(sampler.beta)),
                  "tau": float(sampler.tau), "epsilon": float(sampler.epsilon),
                  "langevin_step": float(sampler.langevin_step), "n_bonds": int(sampler.bonds.shape[0]),
                  "n_replicas": n_replicas, "n_sites": n, "dtype": jnp.dtype(dtype).name,
                  "devices": len(jax.devices()) if sharding is not None else 1}
    record = [_summary(states)]
    intervals = range(1, times.size)
    intervals = track(intervals, f"spin-diffusion ({n_replicas} replicas)", "interval", enabled=progress)
    for index in intervals:
        states = advance_replicas(sampler, states, jnp.asarray(times[index], dtype))
        if bool(jnp.any(states.displaced)):
            raise RuntimeError(
                f"spin-diffusion: in ({times[index - 1]:g}, {times[index]:g}] an atom of replica(s) "
                f"{np.flatnonzero(np.asarray(states.displaced))[:10].tolist()} moved more than skin/2 = "
                f"{sampler.skin / 2:g} Å from the lattice (or a Gaussian-mode relaxation failed); "
                "rebuild the neighbour list with a larger skin")
        record.append(_summary(states))
        if output is not None:
            _trajectory(times[: index + 1], record, parameters).save(output)
    return _trajectory(times, record, parameters)


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
