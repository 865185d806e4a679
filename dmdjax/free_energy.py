r"""The variational-Gaussian (VG) free energy F(X, k, s) of DMD (DESIGN.md §2).

Trial measure: x_i ~ N(X_i, (β k_i)⁻¹ I_d) independently, species independent with
P(site i holds species A) = c_i = (1 + s_i)/2. Then

.. math::

    F(X, k, s) = ⟨V⟩ + β^{-1} Σ_i [c_i \ln c_i + (1 − c_i) \ln(1 − c_i)]
                 + β^{-1} (d/2) Σ_i [\ln(β k_i / 2π) − 1]              \qquad (F1)

(the seed's eqs. (15)/(19) omit β⁻¹ on the last term; it is needed for an energy).

⟨V⟩ is evaluated in the species mean field (DESIGN.md §2): species weights
w_i = (c_i, 1 − c_i) on the two species of ``species_pair`` and, for EAM, the embedding
energy taken at the *averaged* density, Σ_a c_i^a F_a(ρ̄_{i,a}) with
ρ̄_{i,a} = Σ_j Σ_b c_j^b ⟨f_{b→a}(r_ij)⟩ (the "averaged-density" approximation, also
used by the LAMMPS-based DMD codes; it is not ⟨F(ρ)⟩).

Pair averages: x_i − x_j ~ N(R_ij, σ_ij² I_d), σ_ij² = 1/(βk_i) + 1/(βk_j), computed by a
quadrature rule (``quadrature``):

* ``"gauss-hermite"`` (default, ``nodes`` m = 8): in 3-D the exact 1-D reduction
  ⟨g⟩ = (1/(R√π)) Σ_q w_q (R + α t_q) g(|R + α t_q|), α = √2 σ; in 1-D
  ⟨g⟩ = (1/√π) Σ_q w_q g(|R + α t_q|); in 2-D the m×m tensor rule.
* ``"third-degree"``: the cheap 2d-point rule of the LAMMPS-based DMD codes, points at
  R ± √d σ e_k with weights 1/(2d). dmdjax orients e_1 along R (so the rule is
  rotation invariant): two points at |R ± √d σ| and 2(d − 1) at √(R² + d σ²).

Measured errors of each rule against Monte Carlo are in ``docs/quadrature.md``.

Interaction range: a pair contributes as long as one of its quadrature points lies inside the
cut-off r_c, i.e. while R < r_c + reach with reach = c σ_max, c = √2 max_q |t_q| (4.14 for
8 Gauss–Hermite nodes, 5.39 for 16) or √d (third-degree), and σ_max² = 2/(β k_min) the largest
pair variance (k_min: the softest unpinned site). The neighbour list must hold every pair
closer than :meth:`VGFreeEnergy.interaction_range` = r_c + reach at the current k and T — not
just r_c + skin — or F, μ and ∇F depend on the skin. :meth:`VGFreeEnergy.neighbor_list` builds
such a list, host-side calls check it (``ValueError``), and :func:`dmdjax.relax` and
:func:`dmdjax.dmd.run` rebuild it when k softens or atoms move.

Per-species widths (``widths="species"``, DESIGN.md §2.1, as in the C++ code MAPP): site i
holds species a with probability c_i^a and then x_i ~ N(X_i, (β k_ia)⁻¹ I_d), so k is
``(N, 2)`` (columns: the s = +1 and s = −1 species), the pair variance of species (a, b) on
sites (i, j) is 1/(βk_ia) + 1/(βk_jb) and the vibrational term is
β⁻¹ (d/2) Σ_i Σ_a c_i^a [ln(β k_ia / 2π) − 1]. These sums run through JAX's autodiff
(:func:`dmdjax.pair_sums.resolved_site_energies`): meant for up to ~10⁴ sites.

The kinetic term (``include_kinetic=True``): d β⁻¹ Σ_i Σ_a c_i^a ln Λ_a with the thermal de
Broglie wavelength Λ_a = h/√(2π m_a k_B T) (h in eV·fs, m_a in amu, Λ in Å), which makes F
the absolute free energy MAPP reports; without it (the default) F is configurational only.

Pinned atoms are clamped (zero variance, no vibrational term; their k is ignored).
Pinned species sites may hold s = ±1 exactly; their configurational entropy is then a
constant and their chemical potential is the excess part only.
"""

from __future__ import annotations

from typing import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy
from jaxtyping import Array, Bool, Float

from . import _validate
from . import neighbors as _neighbors
from .cell import Cell
from .state import DMDState
from .energy import check_separation, masked_distance, pair_geometry, site_hessian_trace
from . import pair_sums
from .potentials import Potential
from .units import beta_from_temperature, thermal_wavelength
from .quadrature import QUADRATURE_RULES, gaussian_average, reach_factor

#: The variational families of the Gaussian widths: one per site, or one per site and species.
WIDTHS = ("site", "species")


class VGFreeEnergy(eqx.Module):
    """The VG free energy (F1) of a system, as a callable pytree.

    ``vg(state, neighbors)`` returns F in eV for a :class:`~dmdjax.DMDState` (X, k, s).

    Attributes:
        potential: the interatomic potential.
        cell: the simulation cell.
        temperature: T in K (a pytree leaf: differentiate or vmap over it).
        pinned: ``(N,)`` clamped atoms (fixed X, no fluctuations).
        pinned_species: ``(N,)`` sites whose s does not evolve (may be exactly ±1).
        species_pair: indices (A, B) in ``potential.species`` of s = +1 and s = −1.
        quadrature, nodes: the Gaussian pair-average rule (module docstring).
        widths: ``"site"`` (k ``(N,)``) or ``"species"`` (k ``(N, 2)``, module docstring).
        include_kinetic: add the kinetic (de Broglie) term. masses: the potential's species'
            masses (amu), or None when unknown (then ``include_kinetic`` is refused).
    """

    potential: Potential
    cell: Cell
    temperature: Float[Array, ""]
    pinned: Bool[Array, " n"]
    pinned_species: Bool[Array, " n"]
    species_pair: tuple[int, int] = eqx.field(static=True)
    quadrature: str = eqx.field(static=True)
    nodes: int = eqx.field(static=True)
    widths: str = eqx.field(static=True)
    include_kinetic: bool = eqx.field(static=True)
    masses: tuple[float, ...] | None = eqx.field(static=True)

    def __init__(
        self,
        potential: Potential,
        cell: Cell,
        temperature,
        n_sites: int,
        *,
        pinned=None,
        pinned_species=None,
        species: Sequence[str] | None = None,
        quadrature: str = "gauss-hermite",
        nodes: int = 8,
        widths: str = "site",
        include_kinetic: bool = False,
        masses=None,
    ):
        """
        Arguments:
            potential, cell: as the attributes.
            temperature: T in K, > 0.
            n_sites: N, the number of sites (for the default masks).
            pinned, pinned_species: ``(N,)`` boolean masks (default: none).
            species: names of the s = +1 and s = −1 species (default: the potential's
                first two; a one-species potential uses it for both).
            quadrature, nodes: the pair-average rule and its number of nodes.
            widths: ``"site"`` (default) or ``"species"``: one Gaussian width per site, or
                one per site and species (module docstring).
            include_kinetic: add the kinetic term d β⁻¹ Σ c_i^a ln Λ_a (default False).
            masses: ``(S,)`` atomic masses (amu) of the potential's species, or a dict by
                name; default the potential's (an EAM file's). Needed for ``include_kinetic``.
        """
        _validate.temperature(temperature)
        if quadrature not in QUADRATURE_RULES:
            raise ValueError(f"quadrature must be one of {QUADRATURE_RULES}; got {quadrature!r}")
        if quadrature == "gauss-hermite" and not (isinstance(nodes, int) and nodes >= 1):
            raise ValueError(f"nodes must be a positive integer; got {nodes!r}")
        if species is None:
            pair = (0, 1) if potential.n_species > 1 else (0, 0)
        else:
            if len(species) != 2:
                raise ValueError(f"species must name the s = +1 and s = -1 species; got {species!r}")
            pair = tuple(potential.species_index(name) for name in species)
        self.potential = potential
        self.cell = cell
        self.temperature = jnp.asarray(temperature, dtype=float)
        self.pinned = _mask(pinned, n_sites, "pinned")
        self.pinned_species = _mask(pinned_species, n_sites, "pinned_species")
        self.species_pair = pair
        self.quadrature = quadrature
        self.nodes = int(nodes)
        if widths not in WIDTHS:
            raise ValueError(f"widths must be one of {WIDTHS}; got {widths!r}")
        self.widths = widths
        self.include_kinetic = bool(include_kinetic)
        self.masses = _masses(potential, masses)
        if self.include_kinetic and self.masses is None:
            raise ValueError(f"include_kinetic=True needs the species' masses: the potential {potential.species} "
                             "carries none; pass masses=(m_1, ...) in amu")

    @property
    def stiffness_shape(self) -> tuple[int, ...]:
        """``(N,)`` for one width per site, ``(N, 2)`` for one per site and species."""
        n = self.pinned.shape[0]
        return (n,) if self.widths == "site" else (n, 2)

    @property
    def pinned_stiffness(self) -> Bool[Array, "n ..."]:
        """The pinned mask shaped to broadcast against k: ``(N,)`` or ``(N, 1)``."""
        return self.pinned if self.widths == "site" else self.pinned[:, None]

    @property
    def beta(self) -> Float[Array, ""]:
        """β = 1/(k_B T), 1/eV."""
        return beta_from_temperature(self.temperature)

    def reach(self, stiffness: Float[Array, " n"]) -> Float[Array, ""]:
        """How far past the cut-off (Å) the pair averages reach at ``stiffness``: c σ_max with
        σ_max² = 2/(β k_min) over unpinned sites (module docstring). 0 if every atom is pinned."""
        dtype = jnp.result_type(stiffness)
        free_stiffness = jnp.where(self.pinned_stiffness, jnp.inf, jnp.asarray(stiffness, dtype))
        largest_variance = 2.0 / (self.beta.astype(dtype) * jnp.min(free_stiffness))
        factor = reach_factor(self.cell.dim, self.quadrature, self.nodes)
        return factor * jnp.sqrt(jnp.where(jnp.isfinite(largest_variance), largest_variance, jnp.inf))

    def interaction_range(self, stiffness: Float[Array, " n"]) -> Float[Array, ""]:
        """The cut-off plus :meth:`reach` (Å): every pair closer than this must be listed."""
        return self.potential.cutoff + self.reach(stiffness)

    def neighbor_fault(self, state: DMDState, neighbors) -> Float[Array, ""]:
        """How far (Å) the interaction range at the state's k exceeds what ``neighbors`` still
        covers at its positions, or half the narrowest periodic width (jit-safe); ≤ 0 when the
        list is good, > 0 (or inf) when stale or the cell is too small for the Gaussians' reach."""
        needed = self.interaction_range(state.stiffness)
        fault = needed - neighbors.reach(state.positions)
        if any(self.cell.pbc):  # one image per pair: the range must fit in half a periodic width
            inverse = jnp.linalg.inv(self.cell.vectors.astype(needed.dtype))
            widths = 1.0 / jnp.linalg.norm(inverse, axis=0)
            half = 0.5 * jnp.min(jnp.where(jnp.asarray(self.cell.pbc), widths, jnp.inf))
            fault = jnp.maximum(fault, needed - half)
        return fault

    def neighbor_list(self, positions, stiffness=None, *, skin: float = 0.5, margin: float = 1.25,
                      decomposition=None):
        """A neighbour list for this free energy: ``cutoff`` = the potential's cut-off plus
        ``margin`` × :meth:`reach` at ``stiffness`` (default: :meth:`initial_stiffness`), so
        k may soften a little before a rebuild is needed; ``skin`` and ``decomposition`` as in
        :func:`dmdjax.neighbor_list`. Host side."""
        if stiffness is None:
            plain = _neighbors.neighbor_list(positions, self.cell, self.potential.cutoff, skin=skin)
            order_parameter = jnp.zeros(positions.shape[0], positions.dtype)
            stiffness = self.initial_stiffness(positions, order_parameter, plain)
        reach = float(self.reach(stiffness))
        cutoff = self.cell.within_minimum_image(self.potential.cutoff + margin * reach, self.potential.cutoff + reach)
        return _neighbors.neighbor_list(positions, self.cell, cutoff, skin=skin, decomposition=decomposition)

    def covering_neighbors(self, state: DMDState, neighbors, *, margin: float = 1.25):
        """``neighbors`` if it covers :meth:`interaction_range` at ``state``, otherwise a list
        rebuilt at its positions with ``margin`` × the reach (host side)."""
        positions, stiffness = state.positions, state.stiffness
        reach = float(self.reach(stiffness))
        if not np.isfinite(reach):
            raise ValueError(f"stiffness must be finite and > 0 on unpinned sites; the smallest is "
                             f"{float(jnp.min(jnp.where(self.pinned_stiffness, jnp.inf, stiffness)))!r}")
        return _neighbors.covering(neighbors, positions, self.cell, self.potential.cutoff + reach,
                                   margin=(margin - 1.0) * reach)

    def initial_state(self, positions, order_parameter, neighbors) -> DMDState:
        """The state (X, :meth:`initial_stiffness`, s): the usual start of :func:`dmdjax.relax`
        (with per-species widths both species start from the site's guess)."""
        order_parameter = jnp.asarray(order_parameter, positions.dtype)
        concrete = _validate.on_host((self, positions, order_parameter, neighbors))
        guess = _initial_stiffness_jit if concrete else VGFreeEnergy.initial_stiffness
        stiffness = guess(self, positions, order_parameter, neighbors)
        return DMDState(positions, jnp.broadcast_to(stiffness[:, None], self.stiffness_shape)
                        if self.widths == "species" else stiffness, order_parameter)

    def initial_stiffness(self, positions, order_parameter, neighbors) -> Float[Array, " n"]:
        """First guess k_i = tr ∇²_ii V / d at X (mean-field species), floored at 5 % of the
        largest: atoms at unstable or nearly free sites get the floor; pinned atoms get 1.
        One per site, ``(N,)``, for either family of widths."""
        weights = self.species_weights(order_parameter.astype(positions.dtype))
        traces = site_hessian_trace(self.potential, positions, weights, self.cell, neighbors)
        stiffness = traces / self.cell.dim
        floor = 0.05 * jnp.max(jnp.where(self.pinned, 0.0, stiffness))
        return jnp.where(self.pinned, 1.0, jnp.maximum(stiffness, floor))

    def component_weights(self, order_parameter: Float[Array, " n"]) -> Float[Array, "n 2"]:
        """``(N, 2)``: c_i and 1 − c_i, the weights of the s = +1 and s = −1 species."""
        c = 0.5 * (1.0 + order_parameter)
        return jnp.stack([c, 1.0 - c], axis=-1)

    def species_weights(self, order_parameter: Float[Array, " n"]) -> Float[Array, "n s"]:
        """Mean-field weights ``(N, S)``: c_i on species A, 1 − c_i on species B."""
        c = 0.5 * (1.0 + order_parameter)
        a, b = self.species_pair
        weights = jnp.zeros(order_parameter.shape + (self.potential.n_species,), order_parameter.dtype)
        return weights.at[:, a].add(c).at[:, b].add(1.0 - c)

    def check(self, state: DMDState, neighbors) -> None:
        """Host-side validation of a state for this free energy (value checks skipped under jit):
        N and d, positions apart, k > 0 on unpinned atoms, s strictly inside (−1, 1) except on
        pinned species (there in [−1, 1]); ``ValueError`` naming the bad value."""
        if not isinstance(state, DMDState):
            raise TypeError(f"expected a dmdjax.DMDState (positions, stiffness, order_parameter); got "
                            f"{type(state).__name__}")
        positions, stiffness, order_parameter = state.positions, state.stiffness, state.order_parameter
        n = self.pinned.shape[0]
        _validate.shape(positions, (n, self.cell.dim), "positions")
        if jnp.shape(stiffness) != self.stiffness_shape:
            family = ("one per site" if self.widths == "site" else "one per site and species, columns "
                      f"{tuple(self.potential.species[a] for a in self.species_pair)}")
            raise ValueError(f"stiffness must have shape {self.stiffness_shape} (widths={self.widths!r}: {family}); "
                             f"got {jnp.shape(stiffness)}")
        _validate.shape(order_parameter, (n,), "order_parameter")
        if neighbors.idx.shape[0] != n:
            raise ValueError(f"neighbour list is for {neighbors.idx.shape[0]} sites but the free energy has {n}")
        if neighbors.cutoff < self.potential.cutoff:
            raise ValueError(
                f"neighbour list cut-off {neighbors.cutoff} Å is below the potential's {self.potential.cutoff} Å"
            )
        if not _validate.is_concrete((positions, stiffness, order_parameter)):
            return
        _validate.finite(positions, "positions")
        check_separation(self.potential, positions, self.cell, neighbors)
        host = _validate.host_array
        free = ~host(self.pinned)
        _validate.stiffness(host(stiffness)[free].reshape(-1), "stiffness (of unpinned atoms)")
        pinned_species = host(self.pinned_species)
        _validate.order_parameter(host(order_parameter)[~pinned_species], "order_parameter")
        s_pinned = host(order_parameter)[pinned_species]
        if np.any(~np.isfinite(s_pinned) | (np.abs(s_pinned) > 1)):
            raise ValueError(f"order_parameter of pinned species must lie in [-1, 1]; got {s_pinned.tolist()}")

    def check_neighbors(self, state: DMDState, neighbors) -> None:
        """Host side (skipped under jit): raise ``ValueError`` if ``neighbors`` has overflowed or
        does not cover :meth:`interaction_range` at ``state``."""
        positions, stiffness = state.positions, state.stiffness
        overflow, fault = neighbors.overflow, self.neighbor_fault(state, neighbors)
        if not _validate.is_concrete((self, positions, stiffness, neighbors, overflow, fault)):
            return  # traced (inside jit, grad or a trace of concrete values)
        if bool(overflow):
            raise ValueError(_neighbors.OVERFLOW_MESSAGE)
        if float(fault) > 0:
            reach = float(self.reach(stiffness))
            self.cell.check_minimum_image(self.potential.cutoff + reach)  # cell too small: its own error
            raise ValueError(_neighbors.stale_message(
                self.potential.cutoff + reach, neighbors, positions,
                f"the free energy's interaction range (cut-off {self.potential.cutoff:g} Å + the Gaussians' reach "
                f"{reach:.4f} Å at T = {float(self.temperature):g} K)")
                + "; for the VG free energy use vg.neighbor_list(positions, stiffness) or vg.covering_neighbors")

    def averaged_radial(self, positions, stiffness, neighbors) -> Float[Array, "n m t s s"]:
        """Gaussian pair averages of all radial functions on every listed pair, ``(N, M, T, S, S)``.

        ``neighbors``: any pair table with an ``idx`` ``(N, M)`` (a neighbour list or a
        :class:`~dmdjax.kinetics.BondGraph`). With per-species widths the last two axes are the
        two components (the s = +1 and s = −1 species), each pair at its own variance:
        ``(N, M, T, 2, 2)``."""
        dtype = positions.dtype
        if self.widths == "species":
            variance = self.atom_variances(stiffness.astype(dtype))
            return pair_sums.resolved_averages(self.pair_model(neighbors), positions, variance, self.species_pair)
        beta = self.beta.astype(dtype)
        inverse = jnp.where(self.pinned, 0.0, 1.0 / (beta * stiffness.astype(dtype)))  # 1/(βk), Å²
        geometry = pair_geometry(positions, self.cell, neighbors.idx)
        distance = masked_distance(geometry.displacement, geometry.mask, 2.0 * self.potential.cutoff)
        variance = inverse[:, None] + _neighbors.gather(inverse, neighbors.idx)
        return gaussian_average(self.potential, distance, variance, self.cell.dim, self.quadrature, self.nodes)

    def pair_model(self, neighbors) -> pair_sums.PairModel:
        """The Gaussian-averaged pair and embedding sums of this free energy on ``neighbors``."""
        radial = pair_sums.RadialAverages(self.potential, self.cell.dim, self.quadrature, self.nodes)
        return pair_sums.pair_model(radial, self.cell, neighbors.idx,
                                    decomposition=_decomposition(neighbors))

    def atom_variances(self, stiffness: Float[Array, " n"]) -> Float[Array, " n"]:
        """a_i = 1/(βk_i) (Å²), 0 on pinned atoms: the pair variance is a_i + a_j (per species
        with per-species widths: ``(N, 2)``, a_ia + a_jb)."""
        dtype = jnp.result_type(stiffness)
        return jnp.where(self.pinned_stiffness, 0.0, 1.0 / (self.beta.astype(dtype) * stiffness))

    def average_site_energies(self, state: DMDState, neighbors) -> Float[Array, " n"]:
        """Site terms of ⟨V⟩ in the species mean field (eV); they sum to ⟨V⟩."""
        positions = state.positions
        dtype = positions.dtype
        if self.widths == "species":
            energies = pair_sums.resolved_site_energies(
                self.pair_model(neighbors), positions, self.atom_variances(state.stiffness.astype(dtype)),
                self.component_weights(state.order_parameter.astype(dtype)), self.species_pair)
            return _neighbors.check(energies, neighbors)
        weights = self.species_weights(state.order_parameter.astype(dtype))
        variance = self.atom_variances(state.stiffness.astype(dtype))
        energies = pair_sums.site_energies(self.pair_model(neighbors), positions, variance, weights)
        return _neighbors.check(energies, neighbors)

    def _average_energy(self, state: DMDState, neighbors) -> Float[Array, ""]:
        if self.widths == "species":  # autodiff through the site energies (no hand-written gradient)
            return pair_sums.total(self.average_site_energies(state, neighbors), _decomposition(neighbors))
        positions = state.positions
        dtype = positions.dtype
        weights = self.species_weights(state.order_parameter.astype(dtype))
        variance = self.atom_variances(state.stiffness.astype(dtype))
        total = pair_sums.total_energy(positions, variance, weights, self.pair_model(neighbors))
        return _neighbors.check(total, neighbors)

    def weight_derivative(self, dtype=float) -> Float[Array, " s"]:
        """∂w_i/∂s_i along the species axes of :meth:`averaged_radial`: +½ on species A, −½ on
        species B (zero on both if they coincide); with per-species widths (+½, −½) on the components."""
        if self.widths == "species":
            return jnp.asarray([0.5, -0.5], dtype)
        a, b = self.species_pair
        return jnp.zeros((self.potential.n_species,), dtype).at[a].add(0.5).at[b].add(-0.5)

    def entropy_terms(self, stiffness, order_parameter) -> Float[Array, " n"]:
        """The non-energy terms of F per site (eV): the configurational part
        β⁻¹ [c ln c + (1 − c) ln(1 − c)] plus :meth:`vibrational_terms`."""
        dtype = order_parameter.dtype
        beta = self.beta.astype(dtype)
        # Pinned species: a constant (no gradient, finite even at s = ±1).
        s_free = jnp.where(self.pinned_species, 0.0, order_parameter)
        s_const = jax.lax.stop_gradient(order_parameter)

        def mixing(s):
            c = 0.5 * (1.0 + s)
            return xlogy(c, c) + xlogy(1.0 - c, 1.0 - c)

        configurational = jnp.where(self.pinned_species, mixing(s_const), mixing(s_free)) / beta
        return configurational + self.vibrational_terms(stiffness, order_parameter)

    def vibrational_terms(self, stiffness, order_parameter) -> Float[Array, " n"]:
        """β⁻¹ (d/2)[ln(βk_i/2π) − 1] per site (eV; 0 on pinned atoms) — with per-species widths
        Σ_a c_i^a β⁻¹ (d/2)[ln(βk_ia/2π) − 1] — plus, with ``include_kinetic``, the kinetic term
        d β⁻¹ Σ_a c_i^a ln Λ_a (on every site: clamped atoms keep their momenta)."""
        dtype = order_parameter.dtype
        beta = self.beta.astype(dtype)
        k_safe = jnp.where(self.pinned_stiffness, 1.0, stiffness.astype(dtype))
        vibrational = 0.5 * self.cell.dim * (jnp.log(beta * k_safe / (2 * np.pi)) - 1.0) / beta
        weights = self.component_weights(order_parameter)
        if self.widths == "species":
            vibrational = jnp.sum(weights * vibrational, axis=-1)
        out = jnp.where(self.pinned, 0.0, vibrational)
        if self.include_kinetic:
            masses = jnp.asarray([self.masses[a] for a in self.species_pair], dtype)
            wavelength = thermal_wavelength(masses, self.temperature.astype(dtype))
            out = out + self.cell.dim * jnp.sum(weights * jnp.log(wavelength), axis=-1) / beta
        return out

    def site_free_energies(self, state: DMDState, neighbors) -> Float[Array, " n"]:
        """Per-site free energies (eV); they sum to F."""
        self.check(state, neighbors)
        self.check_neighbors(state, neighbors)
        dtype = state.positions.dtype
        average = self.average_site_energies(state, neighbors)
        return average + self.entropy_terms(state.stiffness.astype(dtype), state.order_parameter.astype(dtype))

    def __call__(self, state: DMDState, neighbors) -> Float[Array, ""]:
        """F(X, k, s) in eV (F1) of ``state``: X ``(N, d)`` Å, k ``(N,)`` eV/Å², s ``(N,)``.

        ⟨V⟩ and its gradient come from :mod:`dmdjax.pair_sums` (row blocks, analytic gradient)."""
        self.check(state, neighbors)
        self.check_neighbors(state, neighbors)
        dtype = state.positions.dtype
        entropy = self.entropy_terms(state.stiffness.astype(dtype), state.order_parameter.astype(dtype))
        return self._average_energy(state, neighbors) + pair_sums.total(entropy, _decomposition(neighbors))

    def average_energy(self, state: DMDState, neighbors) -> Float[Array, ""]:
        """⟨V⟩ in the species mean field, eV."""
        self.check(state, neighbors)
        self.check_neighbors(state, neighbors)
        return self._average_energy(state, neighbors)

    def chemical_potential(self, state: DMDState, neighbors) -> Float[Array, " n"]:
        """μ_i = ∂F/∂s_i = β⁻¹ artanh(s_i) + μ_i^ex (eV), ``(N,)``; excess part only on pinned species."""
        self.check(state, neighbors)
        x, k = state.positions, state.stiffness
        return jax.grad(lambda s: self(DMDState(x, k, s), neighbors))(state.order_parameter)

    def excess_chemical_potential(self, state: DMDState, neighbors) -> Float[Array, " n"]:
        """μ_i^ex = μ_i − β⁻¹ artanh(s_i) (eV), ``(N,)``: ∂⟨V⟩/∂s_i, plus, with per-species widths
        or the kinetic term, the s-derivative of :meth:`vibrational_terms` (DESIGN.md §2.1)."""
        self.check(state, neighbors)
        self.check_neighbors(state, neighbors)
        x, k = state.positions, state.stiffness
        dtype = x.dtype

        def excess(s):
            average = self._average_energy(DMDState(x, k, s), neighbors)
            if self.widths == "site" and not self.include_kinetic:
                return average
            return average + pair_sums.total(self.vibrational_terms(k.astype(dtype), s.astype(dtype)),
                                             _decomposition(neighbors))

        return jax.grad(excess)(state.order_parameter)

    def stress(self, state: DMDState, neighbors) -> Float[Array, "d d"]:
        """The free energy's stress σ_F = (1/V) ∂F/∂ε (eV/Å³, ASE's sign: σ = −P for a
        hydrostatic pressure P), ``(d, d)`` symmetric, for the
        homogeneous strain X → (I + ε) X of the mean positions and the cell at fixed k and s.
        At (X, k) relaxed (:func:`dmdjax.relax`) or k relaxed at fixed X
        (:func:`dmdjax.relax.relax_stiffness`) this is the total strain derivative of the
        relaxed F (the envelope theorem: ∂F/∂k = 0 there). Only ⟨V⟩ depends on the strain.
        Fully periodic cells only. Forward mode over the d² strain components.

        Raises:
            ValueError: a cell that is not fully periodic.
        """
        if not self.cell.fully_periodic:
            raise ValueError(f"the free energy's stress needs a fully periodic cell; pbc is {self.cell.pbc}")
        self.check(state, neighbors)
        self.check_neighbors(state, neighbors)
        dtype = state.positions.dtype
        vectors = self.cell.vectors.astype(dtype)

        def strained(strain):
            deformation = jnp.eye(self.cell.dim, dtype=dtype) + strain
            vg = eqx.tree_at(lambda v: v.cell.vectors, self, vectors @ deformation.T)
            moved = DMDState(state.positions @ deformation.T, state.stiffness, state.order_parameter)
            return vg._average_energy(moved, neighbors)

        derivative = jax.jacfwd(strained)(jnp.zeros((self.cell.dim, self.cell.dim), dtype))
        return 0.5 * (derivative + derivative.T) / jnp.abs(jnp.linalg.det(vectors))


_initial_stiffness_jit = eqx.filter_jit(VGFreeEnergy.initial_stiffness)


def _decomposition(neighbors):
    """The devices a list's rows are sharded over (None: one device, or a pair table without)."""
    return getattr(neighbors, "decomposition", None)


def _masses(potential: Potential, masses) -> tuple[float, ...] | None:
    """The species' masses (amu), ``(S,)``: given (a sequence, or a dict by species name), or the
    potential's own, or None."""
    if masses is None:
        masses = getattr(potential, "masses", None)
        if masses is None:
            return None
    if isinstance(masses, dict):
        missing = [name for name in potential.species if name not in masses]
        if missing:
            raise ValueError(f"masses: no mass for species {missing} of the potential {potential.species}")
        masses = [masses[name] for name in potential.species]
    values = np.asarray(masses, dtype=float)
    if values.shape != (potential.n_species,) or not np.all(np.isfinite(values) & (values > 0)):
        raise ValueError(f"masses must be {potential.n_species} positive amu values, one per species "
                         f"{potential.species}; got {masses!r}")
    return tuple(float(m) for m in values)


def _mask(value, n: int, name: str) -> Array:
    if value is None:
        return jnp.zeros((n,), dtype=bool)
    mask = np.asarray(value)
    if mask.dtype != bool:
        indices = mask.astype(int)
        mask = np.zeros(n, dtype=bool)
        mask[indices] = True
    if mask.shape != (n,):
        raise ValueError(f"{name} must be a boolean mask of shape ({n},) or a list of indices; got shape {mask.shape}")
    return jnp.asarray(mask)


def order_parameter_from_concentration(concentration) -> Array:
    """s = 2c − 1, with c the concentration of the s = +1 species."""
    return 2.0 * jnp.asarray(concentration) - 1.0


def concentration_from_order_parameter(order_parameter) -> Array:
    """c = (1 + s)/2."""
    return 0.5 * (1.0 + jnp.asarray(order_parameter))
