r"""Species kinetics on a bond graph: the slow process of DMD (DESIGN.md §4).

Every law is a pure function ``(s, μ or μ^ex, graph, parameters) -> ds/dt`` with an
antisymmetric flux on each bond, so Σ_i s_i is conserved exactly:

* (K1) DMD gradient flow, seed eqs. (3), (38):
  ṡ_i = Σ_j M_ij (μ_j − μ_i), with M_ij = k_c (constant) or a symmetric mobility M(s_i, s_j).
  F is a Lyapunov function: dF/dt = −½ Σ_ij M_ij (μ_i − μ_j)² ≤ 0.
* (K2) Mean-field spin-diffusion, seed eq. (36):
  ṡ_i = (1/2τ) Σ_j [(s_j − s_i) − (1 − s_i s_j) tanh(β D_ij)], with the exact swap divided
  difference D_ij = [V̌(s^{ij}) − V̌(s)]/(s_j − s_i) or the gradient variant D_ij = μ_i^ex − μ_j^ex.
* (K3) Master equation with Arrhenius rates, seed eq. (20):
  ṡ_i = ½ Σ_j [(1 + s_j)(1 − s_i) Γ_{j→i} − (1 + s_i)(1 − s_j) Γ_{i→j}],
  Γ_{j→i} = ν e^{−βQ} e^{−β(μ_i^ex − μ_j^ex)}, Γ_{i→j} = ν e^{−βQ} e^{+β(μ_i^ex − μ_j^ex)}; the rates use the
  excess potential only (the configurational entropy sits in the (1 ± s) prefactors).

Bonds touching a pinned-species site carry no flux.
"""

from __future__ import annotations

from typing import Callable, Union

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ._precision import HIGHEST
from .cell import Cell
from .energy import masked_distance, pair_geometry
from . import _validate
from .neighbors import NeighborList, gather
from .state import DMDState


class BondGraph(eqx.Module):
    """Bonds (i, j) as a mask over a Dense neighbour list (both orientations present).

    Attributes:
        idx: ``(N, M)`` neighbour indices (N marks padding).
        mask: ``(N, M)`` True where (i, idx[i, m]) is a kinetic bond.
    """

    idx: Int[Array, "n m"]
    mask: Bool[Array, "n m"]

    @property
    def n_bonds(self) -> int:
        """Number of unordered bonds."""
        return int(np.asarray(self.mask).sum()) // 2

    def neighbor_values(self, values: Float[Array, " n"]) -> Float[Array, "n m"]:
        """``values[j]`` for every slot (zero on padding)."""
        return gather(values, self.idx)

    def divergence(self, flux: Float[Array, "n m"]) -> Float[Array, " n"]:
        """Σ_j flux_{j→i} over bonds: the rate of change at i for an antisymmetric bond flux."""
        return jnp.sum(jnp.where(self.mask, flux, 0.0), axis=1)


def bond_graph(positions, cell: Cell, neighbors: NeighborList, cutoff: float, pinned_species=None) -> BondGraph:
    """Kinetic bonds: listed pairs closer than ``cutoff`` (Å), both ends free species.

    Raises:
        ValueError: if ``cutoff`` exceeds the neighbour list's cut-off + skin, or is not positive.
    """
    if not cutoff > 0:
        raise ValueError(f"kinetic cutoff must be > 0 Å; got {cutoff!r}")
    if cutoff > neighbors.cutoff + neighbors.skin:
        raise ValueError(f"kinetic cutoff {cutoff} Å exceeds the neighbour list's range "
                         f"{neighbors.cutoff + neighbors.skin} Å")
    pinned = jnp.zeros(positions.shape[0], bool) if pinned_species is None else jnp.asarray(pinned_species)
    return _bond_graph(positions, cell, neighbors, float(cutoff), pinned)


@eqx.filter_jit
def _bond_graph(positions, cell, neighbors, cutoff, pinned):
    geometry = pair_geometry(positions, cell, neighbors.idx)
    distance = masked_distance(geometry.displacement, geometry.mask, 2.0 * cutoff)
    mask = geometry.mask & (distance < cutoff) & ~pinned[:, None] & ~gather(pinned, neighbors.idx, fill=True)
    return BondGraph(neighbors.idx, mask)


def gradient_flow(
    order_parameter: Float[Array, " n"],
    chemical_potential: Float[Array, " n"],
    graph: BondGraph,
    mobility: float | Callable[[Array, Array], Array],
) -> Float[Array, " n"]:
    """(K1) ṡ_i = Σ_j M_ij (μ_j − μ_i).

    Arguments:
        order_parameter: s ``(N,)``.
        chemical_potential: μ = ∂F/∂s ``(N,)``, eV.
        graph: the bonds.
        mobility: k_c (1/(eV·time)) or a symmetric function ``M(s_i, s_j)`` of bond-shaped arrays.
    """
    mu_j = graph.neighbor_values(chemical_potential)
    if callable(mobility):
        m = mobility(order_parameter[:, None], graph.neighbor_values(order_parameter))
    else:
        m = mobility
    return graph.divergence(m * (mu_j - chemical_potential[:, None]))


def spin_diffusion(
    order_parameter: Float[Array, " n"],
    divided_difference: Float[Array, "n m"],
    graph: BondGraph,
    beta,
    tau,
) -> Float[Array, " n"]:
    """(K2) ṡ_i = (1/2τ) Σ_j [(s_j − s_i) − (1 − s_i s_j) tanh(β D_ij)].

    Arguments:
        divided_difference: D_ij on bonds ``(N, M)`` (antisymmetric), eV; see
            :func:`swap_divided_difference` and :func:`gradient_divided_difference`.
        beta: 1/(k_B T), 1/eV.
        tau: the exchange time scale τ.
    """
    s_i = order_parameter[:, None]
    s_j = graph.neighbor_values(order_parameter)
    flux = (s_j - s_i) - (1.0 - s_i * s_j) * jnp.tanh(beta * divided_difference)
    return graph.divergence(flux) / (2.0 * tau)


def gradient_divided_difference(excess_chemical_potential: Float[Array, " n"], graph: BondGraph):
    """The gradient variant D_ij = μ_i^ex − μ_j^ex (F decreases along it)."""
    return excess_chemical_potential[:, None] - graph.neighbor_values(excess_chemical_potential)


def swap_divided_difference(
    order_parameter: Float[Array, " n"],
    excess_chemical_potential: Float[Array, " n"],
    coupling: Float[Array, "n m"],
    graph: BondGraph,
):
    """The exact swap divided difference of a multilinear V̌:
    D_ij = [V̌(s^{ij}) − V̌(s)]/(s_j − s_i) = μ_i^ex − μ_j^ex − J_ij (s_j − s_i).

    Written without a division, so s_i = s_j is its (finite) limit. ``coupling`` is
    J_ij = ∂²V̌/∂s_i∂s_j on bonds (see :func:`pair_coupling`).
    """
    s_j = graph.neighbor_values(order_parameter)
    return gradient_divided_difference(excess_chemical_potential, graph) - coupling * (s_j - order_parameter[:, None])


def pair_coupling(vg, state: DMDState, graph: BondGraph) -> Float[Array, "n m"]:
    """J_ij = ∂²V̌/∂s_i∂s_j on bonds for a pair potential (eV): ¼(⟨φ_AA⟩ − 2⟨φ_AB⟩ + ⟨φ_BB⟩)_ij.

    V̌ (the mean-field ⟨V⟩ at fixed X, k) is then multilinear in s, and
    :func:`swap_divided_difference` with this J is the exact swap divided difference.

    Raises:
        NotImplementedError: for EAM potentials (V̌ is not multilinear in s there).
    """
    from .potentials import PAIR

    if vg.potential.is_embedded:
        raise NotImplementedError(
            "the exact swap divided difference needs a pair potential (V̌ multilinear in s); "
            "use gradient_divided_difference for EAM"
        )
    # On the bonds' own pair table: the neighbour list may have been rebuilt since the graph.
    averaged = vg.averaged_radial(state.positions, state.stiffness, graph)[:, :, PAIR]
    dw = vg.weight_derivative(state.positions.dtype)
    return jnp.where(graph.mask, jnp.einsum("a,nmab,b->nm", dw, averaged, dw, precision=HIGHEST), 0.0)


def master_equation(
    order_parameter: Float[Array, " n"],
    excess_chemical_potential: Float[Array, " n"],
    graph: BondGraph,
    beta,
    attempt_frequency,
    activation_energy,
) -> Float[Array, " n"]:
    """(K3) ṡ_i = ½ Σ_j [(1 + s_j)(1 − s_i) Γ_{j→i} − (1 + s_i)(1 − s_j) Γ_{i→j}].

    Arguments:
        excess_chemical_potential: μ^ex = μ − β⁻¹ artanh s (∂⟨V⟩/∂s with one width per site), eV (not the full μ: see the module docstring).
        beta: 1/eV. attempt_frequency: ν (per unit time). activation_energy: Q, eV.
    """
    s_i = order_parameter[:, None]
    s_j = graph.neighbor_values(order_parameter)
    difference = excess_chemical_potential[:, None] - graph.neighbor_values(excess_chemical_potential)
    rate = attempt_frequency * jnp.exp(-beta * activation_energy)
    flux = (1.0 + s_j) * (1.0 - s_i) * jnp.exp(-beta * difference) - (1.0 + s_i) * (1.0 - s_j) * jnp.exp(
        beta * difference)
    return 0.5 * rate * graph.divergence(flux)


# --- The kinetic laws as parameter objects (what dmdjax.dmd integrates) -----------------------


class GradientFlow(eqx.Module):
    """(K1) ṡ_i = Σ_j M_ij (μ_j − μ_i) (:func:`gradient_flow`); ``mobility`` a constant k_c > 0
    (per eV per unit time) or a symmetric callable ``M(s_i, s_j)``."""

    mobility: Union[float, Callable] = 1.0

    def __check_init__(self):
        if not callable(self.mobility):
            _validate.positive(self.mobility, "GradientFlow.mobility", " (1/(eV·time))")


class SpinDiffusion(eqx.Module):
    """(K2) mean-field spin-diffusion (:func:`spin_diffusion`) with time scale ``tau`` > 0;
    ``variant`` "exact" (:func:`swap_divided_difference`, pair potentials) or "gradient"
    (:func:`gradient_divided_difference`)."""

    tau: float = 1.0
    variant: str = eqx.field(static=True, default="exact")

    def __check_init__(self):
        _validate.positive(self.tau, "SpinDiffusion.tau", " (time)")
        if self.variant not in ("exact", "gradient"):
            raise ValueError(f"SpinDiffusion.variant must be 'exact' or 'gradient'; got {self.variant!r}")


class MasterEquation(eqx.Module):
    """(K3) master equation (:func:`master_equation`), ``attempt_frequency`` ν > 0 (per unit
    time) and ``activation_energy`` Q (eV, finite)."""

    attempt_frequency: float = 1.0
    activation_energy: float = 0.0

    def __check_init__(self):
        _validate.positive(self.attempt_frequency, "MasterEquation.attempt_frequency", " (1/time)")
        _validate.finite(self.activation_energy, "MasterEquation.activation_energy")


KineticLaw = Union[GradientFlow, SpinDiffusion, MasterEquation]


def check_law(vg, law: KineticLaw) -> None:
    """``TypeError`` for an unknown law, ``NotImplementedError`` for the exact K2 with EAM."""
    if not isinstance(law, (GradientFlow, SpinDiffusion, MasterEquation)):
        raise TypeError(f"law must be GradientFlow, SpinDiffusion or MasterEquation; got {type(law).__name__}")
    if isinstance(law, SpinDiffusion) and law.variant == "exact" and vg.potential.is_embedded:
        raise NotImplementedError("SpinDiffusion(variant='exact') needs a pair potential (V̌ multilinear in s); "
                                  "use variant='gradient' for EAM")


def describe_law(law: KineticLaw) -> dict:
    """The law's name and parameters as JSON-ready values (run records and checkpoints)."""
    values = {}
    for name, value in vars(law).items():
        if isinstance(value, (int, float, str)):
            values[name] = value
        elif callable(value):
            values[name] = getattr(value, "__name__", repr(value))
        else:
            values[name] = np.asarray(value).tolist()
    return {"law": type(law).__name__, "law_parameters": values}


class LawParameters(eqx.Module):
    """Any kinetic law as one pytree: the branch index and every numeric parameter traced, so
    that all laws (and all parameter values) share one compiled solver per system shape.
    Built by :func:`law_parameters`."""

    branch: Array
    mobility: Array
    tau: Array
    attempt_frequency: Array
    activation_energy: Array
    mobility_function: Callable | None = eqx.field(static=True, default=None)


_BRANCHES = {"K1": 0, "K2-exact": 1, "K2-gradient": 2, "K3": 3}


def law_parameters(law: KineticLaw, dtype) -> LawParameters:
    """``law`` as a :class:`LawParameters` of ``dtype``."""
    one = lambda value=1.0: jnp.asarray(value, dtype)
    if isinstance(law, GradientFlow):
        function = law.mobility if callable(law.mobility) else None
        return LawParameters(jnp.asarray(_BRANCHES["K1"]), one(1.0 if function else law.mobility), one(), one(),
                             one(), function)
    if isinstance(law, SpinDiffusion):
        return LawParameters(jnp.asarray(_BRANCHES[f"K2-{law.variant}"]), one(), one(law.tau), one(), one())
    if isinstance(law, MasterEquation):
        return LawParameters(jnp.asarray(_BRANCHES["K3"]), one(), one(), one(law.attempt_frequency),
                             one(law.activation_energy))
    raise TypeError(f"law must be GradientFlow, SpinDiffusion or MasterEquation; got {type(law).__name__}")


def species_rate(vg, state: DMDState, neighbors: NeighborList, law: KineticLaw | LawParameters,
                 graph: BondGraph) -> Float[Array, " n"]:
    """ds/dt of ``law`` at the state (X, k, s) (relaxed, for DMD), ``(N,)`` per unit time;
    ``vg`` the :class:`~dmdjax.VGFreeEnergy` whose μ drives it, ``neighbors`` its list.

    With a :class:`LawParameters` the law is chosen by a traced index (``lax.switch``: only
    the chosen branch runs), so one compiled function serves every law."""
    if not isinstance(law, LawParameters):
        check_law(vg, law)
        law = law_parameters(law, state.dtype)
    positions, order_parameter = state.positions, state.order_parameter
    beta = vg.beta.astype(positions.dtype)
    excess = vg.excess_chemical_potential(state, neighbors)

    def gradient_flow_rate():
        mu = vg.chemical_potential(state, neighbors)
        mobility = law.mobility if law.mobility_function is None else law.mobility_function
        return gradient_flow(order_parameter, mu, graph, mobility)

    def spin_diffusion_exact():
        if vg.potential.is_embedded:  # refused by check_law; a placeholder keeps the switch traceable
            return jnp.full_like(order_parameter, jnp.nan)
        divided = swap_divided_difference(order_parameter, excess, pair_coupling(vg, state, graph), graph)
        return spin_diffusion(order_parameter, divided, graph, beta, law.tau)

    def spin_diffusion_gradient():
        return spin_diffusion(order_parameter, gradient_divided_difference(excess, graph), graph, beta, law.tau)

    def master_equation_rate():
        return master_equation(order_parameter, excess, graph, beta, law.attempt_frequency, law.activation_energy)

    return jax.lax.switch(law.branch, [gradient_flow_rate, spin_diffusion_exact, spin_diffusion_gradient,
                                       master_equation_rate])
