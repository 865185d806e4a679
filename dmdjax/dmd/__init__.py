r"""The DMD time integrator: species kinetics with quasistatic (X, k) (DESIGN.md §3-4).

s(t) follows one of the kinetic laws of :mod:`dmdjax.kinetics`; at every evaluation of the
right-hand side (``relax_at="rhs"``) or at the output times (``"interval"``) (X, k) are relaxed
at the current s (warm-started from the state at the start of the current output interval),
and the law is driven by μ = ∂F/∂s or μ^ex = μ − β⁻¹ artanh s there (envelope theorem: no derivative
through the relaxation).

The run is split at the output times: each interval is one ``diffrax.diffeqsolve`` (adaptive
steps; any diffrax solver, e.g. ``diffrax.Kvaerno5()`` for stiff cases) from the state recorded
at its start, and the state at each output time is relaxed, recorded and checked (s inside
(−1, 1), finite). Two drivers share that interval function:

* :func:`solve` — pure: jit-, vmap- and grad-able; returns a :class:`Solution`.
* :func:`run` — the host loop: files and checkpoints (a resumed run equals the uninterrupted
  one bit for bit), neighbour-list rebuilds, progress bars, :class:`DMDError`; returns a
  :class:`Trajectory`.

:func:`equilibrium` finds the long-time state directly.
"""

from ..kinetics import GradientFlow, KineticLaw, MasterEquation, SpinDiffusion, species_rate
from ._equilibrium import Equilibrium, default_equilibrium_tolerance, equilibrium
from ._run import run
from ._solve import RELAX_AT, DMDError, Solution, solve
from ._trajectory import Trajectory, load_trajectory

__all__ = [
    "DMDError", "Equilibrium", "GradientFlow", "KineticLaw", "MasterEquation", "RELAX_AT", "Solution",
    "SpinDiffusion", "Trajectory", "default_equilibrium_tolerance", "equilibrium", "load_trajectory", "run",
    "solve", "species_rate",
]
