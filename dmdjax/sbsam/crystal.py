r"""The nonlinear crystal of SB-SAM: a periodic triangular Morse crystal sampled in full (DESIGN.md §7).

The lattice of :class:`~dmdjax.sbsam.lattice.MorseLattice` with the *full* Morse bond on every
nearest-neighbour pair (no linearisation): displacements u from the deformed sites Fξ, energy

    V(u; F) = Σ_⟨ij⟩ φ(|F (ξ_j − ξ_i) + u_j − u_i|),   φ(r) = D[e^{−2α(r − r₀)} − 2e^{−α(r − r₀)}],

each bond's periodic image shift deformed with the box (the bond list is fixed: in the solid no
pair changes neighbours, which :func:`sample_full` checks). Inner atoms X within
``inner_radius`` of the centre, outer Y the rest. Translations are removed by measuring u from
the centre of mass.

* :func:`sample_full` — canonical samples of the whole crystal by jax-md's BAOAB Langevin
  integrator (``simulate.nvt_langevin``), vmapped over conditions (F, T) and replicas; it keeps
  the inner displacements, the force-matching target −β∇_X V, the inner (local bond) stress and
  the periodic stress, with equilibration and decorrelation checks
  (:func:`integrated_autocorrelation_time`).
* :meth:`MorseCrystal.clamped_score` — the score of the inner region with the outer atoms clamped
  at their deformed sites, −β∇_X V(X, Y = Fξ_Y): the baseline.
* :meth:`MorseCrystal.mean_field_score` — the outer atoms integrated out in the harmonic
  approximation of the surroundings (Hessian H at the deformed lattice): given X, each outer
  neighbour of the region is Gaussian, mean R u_X (:meth:`~MorseCrystal.mean_field_response`,
  R = −H_YY⁻¹H_YX) and covariance k_BT L Lᵀ (:meth:`~MorseCrystal.mean_field_spread`, blocks of
  H_YY⁻¹), and the Morse bond forces are averaged over it (Gauss–Hermite); linearised without the
  spread it is −β(H_XX − W), W = H_XY H_YY⁻¹ H_YX (:meth:`~MorseCrystal.quasi_harmonic_softening`,
  the harmonic oracle's Schur complement). The reference that the SB-SAM model corrects
  (:class:`~dmdjax.sbsam.model.BoundaryCorrection`): the exact score E[−β∇_X V | X] differs from
  it only through the bonds to Y, a function of the *boundary* atoms alone (those bonded to Y),
  because ρ(Y | X) depends on X through them alone.

Units: Å, eV, K, amu; time in √(amu Å²/eV) ≈ 10.18 fs.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..units import beta_from_temperature, temperature_from_thermal_energy, thermal_energy
from ..progress import track
from .lattice import MorseLattice
from .stress import bond_stress


@dataclasses.dataclass(frozen=True)
class MorseCrystal(MorseLattice):
    """A periodic triangular crystal with full Morse nearest-neighbour bonds (fields of
    :class:`~dmdjax.sbsam.lattice.MorseLattice`; defaults 32 × 18 cells = 1152 atoms, inner radius
    13 Å = 97 inner atoms, 36 of them on the boundary) and atomic ``mass`` (amu) for the dynamics."""

    repeats: tuple = (32, 18)
    inner_radius: float = 13.0
    mass: float = 26.98

    @functools.cached_property
    def outer(self) -> np.ndarray:
        """Indices of the outer atoms Y (every atom not inner)."""
        mask = np.ones(self.n_atoms, bool)
        mask[self.inner] = False
        return np.flatnonzero(mask)

    @functools.cached_property
    def boundary(self) -> np.ndarray:
        """Positions (in :attr:`inner` order) of the inner atoms bonded to an outer atom."""
        local = self.local_bonds
        crossing = (local[:, 0] >= 0) != (local[:, 1] >= 0)
        return np.unique(local[crossing].max(axis=1))

    @functools.cached_property
    def neighbours(self) -> np.ndarray:
        """Indices of the outer atoms bonded to an inner atom (the outer side of the boundary), sorted."""
        pairs, _ = self.bonds
        crossing = (self.local_bonds[:, 0] >= 0) != (self.local_bonds[:, 1] >= 0)
        return np.unique(np.where(self.local_bonds[crossing, 0] < 0, pairs[crossing, 0], pairs[crossing, 1]))

    @functools.cached_property
    def region_bonds(self) -> tuple[np.ndarray, np.ndarray]:
        """Bonds with at least one inner atom: pairs ``(b, 2)`` of inner positions (an outer atom as
        m + its position in :attr:`neighbours`) and reference vectors ``(b, 2)``."""
        pairs, vectors = self.bonds
        keep = np.any(self.local_bonds >= 0, axis=1)
        slot = np.full(self.n_atoms, -1)
        slot[self.neighbours] = self.n_inner + np.arange(self.neighbours.size)
        local = np.where(self.local_bonds >= 0, self.local_bonds, slot[pairs])
        return local[keep], vectors[keep]

    # --- energies, forces, stresses ------------------------------------------------------------
    def bond_vectors(self, displacement: Float[Array, "n 2"], deformation) -> Float[Array, "b 2"]:
        """d_b = F(ξ_j − ξ_i) + u_j − u_i for every bond, Å."""
        pairs, vectors = self.bonds
        return vectors @ jnp.asarray(deformation).T + displacement[pairs[:, 1]] - displacement[pairs[:, 0]]

    def energy(self, displacement: Float[Array, "n 2"], deformation) -> Float[Array, ""]:
        """V(u; F), eV, for displacements u (n, 2) Å of every atom."""
        return jnp.sum(self.pair_energy(jnp.linalg.norm(self.bond_vectors(displacement, deformation), axis=-1)))

    def stress(self, displacement: Float[Array, "n 2"], deformation, temperature) -> Float[Array, "2 2"]:
        """The periodic PK stress of one configuration, (1/V₀)[∂V/∂F − N k_BT F⁻ᵀ] (the bond form over
        every bond, equal to :func:`~dmdjax.sbsam.stress.periodic_stress`), eV/Å²."""
        return bond_stress(self.pair_derivative, self.bond_vectors(displacement, deformation), deformation,
                           temperature, coordination=6, atom_volume=self.atom_volume)

    @functools.cached_property
    def translation_weights(self) -> np.ndarray:
        """Per-bond weights ``(B,)`` that turn the sum over every bond into the inner region's bond sum
        averaged over all lattice translates: a bond of direction c weighs n_c^inner / n_c^all (a
        triangular lattice has three bond directions)."""
        _, vectors = self.bonds
        _, inner_vectors = self.inner_bonds

        def direction(v):
            return np.round(np.mod(np.arctan2(v[:, 1], v[:, 0]), np.pi) / (np.pi / 3)).astype(int) % 3

        classes = direction(vectors)
        inner_counts = np.bincount(direction(inner_vectors), minlength=3)
        return inner_counts[classes] / np.bincount(classes, minlength=3)[classes]

    def translated_inner_stress(self, displacement: Float[Array, "n 2"], deformation, temperature):
        """:meth:`inner_stress` averaged over every lattice translate of the region, eV/Å²: the bond
        stress of all bonds with :attr:`translation_weights`. In the periodic crystal its mean equals
        the inner stress's mean (translation symmetry) with a much smaller variance: the full
        system's best estimate."""
        return bond_stress(self.pair_derivative, self.bond_vectors(displacement, deformation), deformation,
                           temperature, coordination=6, atom_volume=self.atom_volume,
                           weights=jnp.asarray(self.translation_weights, displacement.dtype))

    def clamped_energy(self, inner: Float[Array, "m 2"], deformation, neighbours=None, *,
                       bonds: str = "all") -> Float[Array, ""]:
        """V of the bonds that touch X with the outer atoms fixed: the :attr:`neighbours` displaced by
        ``neighbours`` ``(k, 2)`` Å (default: at their deformed sites, u_Y = 0), eV. ``bonds``:
        ``"all"``, ``"inner"`` (both atoms in X) or ``"crossing"`` (X to Y)."""
        pairs, vectors = self.region_bonds
        if bonds != "all":
            crossing = pairs.max(axis=1) >= self.n_inner
            keep = {"inner": ~crossing, "crossing": crossing}[bonds]
            pairs, vectors = pairs[keep], vectors[keep]
        if neighbours is None:
            neighbours = jnp.zeros((self.neighbours.size, 2), inner.dtype)
        padded = jnp.concatenate([inner, neighbours])
        bond = vectors @ jnp.asarray(deformation).T + padded[pairs[:, 1]] - padded[pairs[:, 0]]
        return jnp.sum(self.pair_energy(jnp.linalg.norm(bond, axis=-1)))

    def clamped_score(self, inner: Float[Array, "m 2"], deformation, temperature, neighbours=None
                      ) -> Float[Array, "m 2"]:
        """−β∇_X V(X, Y) with the outer atoms held fixed, 1/Å: at their deformed sites (the clamped
        baseline) or with the :attr:`neighbours` displaced by ``neighbours`` ``(k, 2)`` Å (the
        mean-field score with ``neighbours`` = R u_X, :meth:`mean_field_response`)."""
        beta = beta_from_temperature(temperature)
        return -beta * jax.grad(self.clamped_energy)(inner, deformation, neighbours)

    def hessian(self, deformation, order=None) -> Float[Array, "2n 2n"]:
        """∇²_u V at the deformed lattice (u = 0), eV/Å², over the atoms ``order`` (default all), each
        atom's (x, y) together. Each bond of length r and direction n adds
        K = φ''(r) n nᵀ + (φ'(r)/r)(I − n nᵀ) to the two diagonal blocks and −K to the two
        off-diagonal ones (dtype of ``deformation``)."""
        deformation = jnp.asarray(deformation)
        _, vectors = self.bonds
        bond = jnp.asarray(vectors, deformation.dtype) @ deformation.T
        length = jnp.linalg.norm(bond, axis=-1)
        direction = bond / length[:, None]
        along = jnp.einsum("bi,bj->bij", direction, direction)
        block = (self.bond_stiffness(length)[:, None, None] * along
                 + (self.pair_derivative(length) / length)[:, None, None] * (jnp.eye(2, dtype=bond.dtype) - along))
        return self.assemble_bond_blocks(block, order)

    @functools.cached_property
    def _neighbour_rows(self) -> np.ndarray:
        """The :attr:`neighbours`' coordinates among the outer ones, (neighbour, x/y)."""
        position = np.full(self.n_atoms, -1)
        position[self.outer] = np.arange(self.outer.size)
        return np.stack([2 * position[self.neighbours], 2 * position[self.neighbours] + 1], axis=1).reshape(-1)

    def _split_hessian(self, deformation):
        """(H_XN, H_YX, H_YY) at the deformed lattice: N the :attr:`neighbours` among the outer Y."""
        size = 2 * self.n_inner
        hessian = self.hessian(deformation, np.concatenate([self.inner, self.outer]))
        return hessian[:size, size:][:, self._neighbour_rows], hessian[size:, :size], hessian[size:, size:]

    def mean_field(self, deformation) -> tuple[Float[Array, "2k 2m"], Float[Array, "k 2 2"]]:
        """``(R, L)`` — :meth:`mean_field_response` and :meth:`mean_field_spread` — from one solve
        with H_YY (the expensive part: all outer coordinates)."""
        return self._mean_field(deformation, spread=True)[1:]

    def _mean_field(self, deformation, spread: bool):
        """(H_XN, R, L) from one Hessian and one solve with H_YY; L is None unless ``spread``."""
        neighbour_coupling, coupling, outer = self._split_hessian(deformation)
        rows = self._neighbour_rows
        columns = [coupling]
        if spread:  # the unit columns of the neighbours: their blocks of H_YY⁻¹
            columns.append(jnp.zeros((outer.shape[0], rows.size), outer.dtype).at[rows, np.arange(rows.size)].set(1.0))
        solved = jnp.linalg.solve(outer, jnp.concatenate(columns, axis=1))[rows]
        size, k = coupling.shape[1], rows.size // 2
        if not spread:
            return neighbour_coupling, -solved, None
        blocks = solved[:, size:].reshape(k, 2, k, 2)[np.arange(k), :, np.arange(k), :]
        return neighbour_coupling, -solved[:, :size], jnp.linalg.cholesky(blocks)

    def quasi_harmonic_softening(self, deformation) -> Float[Array, "2m 2m"]:
        r"""W = H_XY H_YY⁻¹ H_YX, eV/Å² (DESIGN.md §7, the Schur complement of the harmonic oracle applied
        to this crystal's Hessian at the deformed lattice): the precision of the inner region's marginal
        in the harmonic approximation of the surroundings is β(H_XX − W), the clamped one βH_XX. Only
        the rows and columns of the :attr:`boundary` atoms are non-zero; H_XX − W annihilates uniform
        translations of the region (the periodic crystal's marginal is translation invariant). Inner
        coordinates in :attr:`inner` order, (atom, x/y). H_XY is non-zero only on the neighbours, so
        W = −H_XN R (:meth:`mean_field_response`)."""
        neighbour_coupling, response, _ = self._mean_field(deformation, spread=False)
        return -neighbour_coupling @ response

    def mean_field_response(self, deformation) -> Float[Array, "2k 2m"]:
        r"""R = −(H_YY⁻¹ H_YX) restricted to the :attr:`neighbours`: their mean displacement given the inner
        ones, E[u_Y | u_X] = R u_X, in the harmonic approximation of the surroundings (dimensionless;
        rows (neighbour, x/y), columns (inner atom, x/y)). :meth:`clamped_score` with the neighbours at
        R u_X is the *mean-field* score: its linearisation is −β(H_XX − W)
        (:meth:`quasi_harmonic_softening`) while its bonds stay full Morse bonds, bounded forces that
        vanish when a bond breaks (a linear softening term would outgrow them and push the atom away)."""
        return self._mean_field(deformation, spread=False)[1]

    def mean_field_spread(self, deformation) -> Float[Array, "k 2 2"]:
        """Cholesky factors L_j of the :attr:`neighbours`' 2 × 2 blocks of H_YY⁻¹ at the deformed lattice,
        Å/√eV: in the harmonic approximation of the surroundings, neighbour j given the inner atoms is
        Gaussian with mean (R u_X)_j (:meth:`mean_field_response`) and covariance k_BT L_j L_jᵀ."""
        return self.mean_field(deformation)[1]

    def mean_field_score(self, inner: Float[Array, "m 2"], deformation, temperature, response, spread=None,
                         nodes: int = 3) -> Float[Array, "m 2"]:
        """The inner region's score with the outer atoms integrated out in the harmonic approximation of
        the surroundings, the bonds kept anharmonic, 1/Å: E[−β∇_X V(X, Y) | X] with each neighbour
        y_j ~ N((R u_X)_j, k_BT L_j L_jᵀ) (``response`` R, ``spread`` L from :meth:`mean_field_response`,
        :meth:`mean_field_spread`), by a ``nodes`` × ``nodes`` Gauss–Hermite rule per neighbour (each
        bond sees one neighbour, so one shared rule is exact per bond). ``spread`` None: the neighbours
        held at their mean (no smearing). Linearised without smearing: −β(H_XX − W)u_X."""
        mean = jnp.reshape(response @ jnp.reshape(inner, (-1,)), (-1, 2))
        if spread is None:
            return self.clamped_score(inner, deformation, temperature, mean)
        points, weights = np.polynomial.hermite_e.hermegauss(nodes)
        grid = np.stack(np.meshgrid(points, points, indexing="ij"), axis=-1).reshape(-1, 2)
        weight = (weights[:, None] * weights[None, :]).reshape(-1) / (2.0 * np.pi)
        scale = jnp.sqrt(thermal_energy(temperature))
        shifts = scale * jnp.einsum("kij,qj->qki", spread, jnp.asarray(grid, inner.dtype))

        def energy(x):  # the inner bonds once, the crossing bonds at every node
            crossing = jax.vmap(lambda shift: self.clamped_energy(x, deformation, mean + shift, bonds="crossing"))(
                shifts)
            return self.clamped_energy(x, deformation, bonds="inner") + jnp.vdot(jnp.asarray(weight, x.dtype), crossing)

        return -jax.grad(energy)(inner) * beta_from_temperature(temperature)

    def full_displacement(self, inner, outer) -> Float[Array, "n 2"]:
        """All displacements (n, 2) from the inner (m, 2) and outer (n − m, 2) ones."""
        full = jnp.zeros((self.n_atoms, 2), inner.dtype)
        return full.at[self.inner].set(inner).at[self.outer].set(outer)


class FullSamples(NamedTuple):
    """Samples of :func:`sample_full`, axes (condition, replica, kept, ...): ``inner`` u_X (Å, from the
    centre of mass), ``force_target`` −β∇_X V (1/Å), ``inner_stress``, ``stress`` (periodic) and
    ``translated_stress`` (:meth:`MorseCrystal.translated_inner_stress`) (eV/Å²), ``energy`` V per
    atom (eV); ``seconds`` of sampling (compile excluded), ``checks``."""

    inner: jax.Array
    force_target: jax.Array
    inner_stress: jax.Array
    stress: jax.Array
    translated_stress: jax.Array
    energy: jax.Array
    seconds: float
    checks: dict


def sample_full(crystal: MorseCrystal, key, deformations, temperatures, *, replicas: int = 4, n_steps: int = 8000,
                thin: int = 40, burn_in: int = 2000, time_step: float = 0.5, friction: float = 0.1,
                chunks: int = 10, progress: bool = False) -> FullSamples:
    """Canonical samples of the whole crystal at each condition by BAOAB Langevin (jax-md).

    Arguments:
        crystal: the system. key: a PRNG key.
        deformations: F ``(c, 2, 2)``; temperatures: T ``(c,)`` K.
        replicas: independent runs per condition (they give the standard errors).
        n_steps: steps after ``burn_in``, every ``thin``-th kept; time_step: Δt (√(amu Å²/eV));
        friction: γ (per time unit). chunks: host round trips (for the progress bar).

    Checks (``checks``): the integrated autocorrelation time of the inner stress trace in kept
    samples (``tau_inner_stress``, per condition; thinned samples are nearly independent when it is
    ≈ 1), the equilibration drift (difference of the two halves' means of V per atom over its
    standard error, ``energy_drift_z``), the largest bond length and the smallest distance between
    second neighbours seen (``max_bond``, ``min_second_neighbour``: the fixed bond list is exact
    only while the first stays well below and the second well above the second-neighbour distance).

    Raises:
        ValueError: bad shapes or sizes.
    """
    second, second_vectors = crystal.pairs_at(np.sqrt(3.0) * crystal.spacing)

    def record(u, f, kt):
        inner = u[crystal.inner]
        energy, gradient = jax.value_and_grad(crystal.energy)(u, f)
        temperature = temperature_from_thermal_energy(kt)
        far = second_vectors @ f.T + u[second[:, 1]] - u[second[:, 0]]
        return (inner, -gradient[crystal.inner] / kt, crystal.inner_stress(inner, f, temperature),
                crystal.stress(u, f, temperature), crystal.translated_inner_stress(u, f, temperature),
                energy / crystal.n_atoms, jnp.max(jnp.linalg.norm(crystal.bond_vectors(u, f), axis=-1)),
                jnp.min(jnp.linalg.norm(far, axis=-1)))

    shaped, seconds = baoab_batches(crystal.energy, (crystal.n_atoms, 2), crystal.mass, key, deformations,
                                    temperatures, record, replicas=replicas, n_steps=n_steps, thin=thin,
                                    burn_in=burn_in, time_step=time_step, friction=friction, chunks=chunks,
                                    progress=progress)
    inner, target, inner_stress, stress, translated, energy, max_bond, min_second = shaped
    checks = {"tau_inner_stress": [integrated_autocorrelation_time(inner_stress[c, :, :, 0, 0])
                                   for c in range(inner.shape[0])],
              "energy_drift_z": energy_drift_z(energy),
              "max_bond": float(max_bond.max()), "min_second_neighbour": float(min_second.min()),
              "second_neighbour_distance": float(np.sqrt(3.0) * crystal.spacing)}
    return FullSamples(inner, target, inner_stress, stress, translated, energy, seconds, checks)


def baoab_batches(energy_or_force, shape: tuple, mass: float, key, deformations, temperatures, record, *,
                  replicas: int, n_steps: int, thin: int, burn_in: int, time_step: float, friction: float,
                  chunks: int, progress: bool = False):
    """Canonical BAOAB Langevin runs (jax-md ``simulate.nvt_langevin``) of one system at each condition,
    vmapped over conditions × replicas, from u = 0: ``burn_in`` steps, then every ``thin``-th of
    ``n_steps`` steps ``record(u, F, k_BT)`` (u from the centre of mass) is kept, in ``chunks`` host
    round trips (progress bar). ``energy_or_force(u, deformation)`` (a scalar energy or the forces);
    ``shape`` of u; deformations ``(c, d, d)``, temperatures ``(c,)`` K.

    Returns ``(arrays, seconds)``: each recorded array with axes (condition, replica, kept, ...), and the
    sampling wall time (compilation excluded).

    Raises:
        ValueError: bad shapes or counts.
    """
    from jax_md import simulate, space

    deformations = jnp.asarray(deformations)
    temperatures = jnp.asarray(temperatures, deformations.dtype)
    d = shape[-1]
    if deformations.ndim != 3 or deformations.shape[1:] != (d, d) or temperatures.shape != deformations.shape[:1]:
        raise ValueError(f"need deformations (c, {d}, {d}) and temperatures (c,); got {deformations.shape}, "
                         f"{temperatures.shape}")
    if min(replicas, n_steps, thin, chunks) < 1 or burn_in < 0 or n_steps % (thin * chunks):
        raise ValueError(f"need replicas, thin, chunks >= 1, burn_in >= 0 and n_steps ({n_steps}) a multiple of "
                         f"thin × chunks ({thin} × {chunks})")
    if not (time_step > 0 and friction > 0):
        raise ValueError(f"time_step and friction must be > 0; got {time_step}, {friction}")
    count = deformations.shape[0]
    _, shift = space.free()
    init, apply = simulate.nvt_langevin(energy_or_force, shift, time_step, kT=1.0, gamma=friction)
    batch_f = jnp.repeat(deformations, replicas, axis=0)
    batch_kt = jnp.repeat(thermal_energy(temperatures), replicas)
    zero = jnp.zeros(shape, deformations.dtype)
    state = jax.jit(jax.vmap(lambda k, f, kt: init(k, zero, mass=mass, kT=kt, deformation=f)))(
        jax.random.split(key, count * replicas), batch_f, batch_kt)

    def advance(state, f, kt, steps):
        return jax.lax.fori_loop(0, steps, lambda _, s: apply(s, kT=kt, deformation=f), state)

    def block(state, f, kt, kept):
        def one(s, _):
            s = advance(s, f, kt, thin)
            return s, record(s.position - jnp.mean(s.position, axis=0), f, kt)
        return jax.lax.scan(one, state, None, length=kept)

    burn = jax.jit(jax.vmap(lambda s, f, kt: advance(s, f, kt, burn_in))).lower(state, batch_f, batch_kt).compile()
    run = jax.jit(jax.vmap(lambda s, f, kt: block(s, f, kt, n_steps // thin // chunks))).lower(
        state, batch_f, batch_kt).compile()
    start = time.perf_counter()
    state = burn(state, batch_f, batch_kt)
    parts = []
    for _ in track(range(chunks), "full system (BAOAB)", "chunk", enabled=progress):
        state, out = run(state, batch_f, batch_kt)
        parts.append(jax.device_get(out))
    seconds = time.perf_counter() - start
    joined = [np.concatenate([p[i] for p in parts], axis=1) for i in range(len(parts[0]))]
    return [a.reshape((count, replicas) + a.shape[1:]) for a in joined], seconds


def energy_drift_z(energy) -> list:
    """The equilibration check of ``energy`` (condition, replica, kept): the difference of the two
    halves' means over its standard error (from the replicas' spread; the halves' difference itself
    with one replica), per condition. With r replicas it is Student-t with r − 1 degrees of freedom
    under the null (heavy-tailed for r = 2)."""
    energy = np.asarray(energy)
    replicas = energy.shape[1]
    half = energy.shape[2] // 2
    first, last = energy[:, :, :half].mean(axis=(1, 2)), energy[:, :, half:].mean(axis=(1, 2))
    spread = energy.mean(axis=2).std(axis=1, ddof=1) / np.sqrt(replicas) if replicas > 1 else np.abs(first - last)
    return ((last - first) / np.maximum(2 * spread, 1e-300)).tolist()


def integrated_autocorrelation_time(series, window_factor: float = 5.0) -> float:
    """τ_int = 1 + 2 Σ_t ρ(t) of ``series`` (replicas, length), averaged autocorrelation over the
    replicas, summed up to Sokal's automatic window (the first W ≥ ``window_factor`` τ_int(W)); in
    units of the series' spacing (1 for independent samples)."""
    x = np.asarray(series, dtype=float)
    x = x - x.mean(axis=1, keepdims=True)
    n = x.shape[1]
    size = 1 << int(np.ceil(np.log2(2 * n)))
    spectrum = np.fft.rfft(x, size, axis=1)
    correlation = np.fft.irfft(spectrum * np.conj(spectrum), size, axis=1)[:, :n].mean(axis=0)
    if correlation[0] <= 0:
        return 1.0
    rho = correlation / correlation[0]
    tau = 1.0
    for window in range(1, n):
        tau = 1.0 + 2.0 * np.sum(rho[1:window + 1])
        if window >= window_factor * tau:
            break
    return float(max(tau, 1e-3))
