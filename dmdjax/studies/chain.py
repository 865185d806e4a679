r"""The chain study (seed "Simulations"; DESIGN.md §6): mean-field spin-diffusion (K2),
DMD (K1) and the replica average of the scale-separated spin-diffusion on a 1-D chain.

The chain: N sites of a two-species Lennard-Jones chain (metal units), site 0 pinned in
place with σ = +1 (A), the last site free to move with σ = −1 (B); both end species are
fixed. Like species attract more (ε_AB < (ε_AA + ε_BB)/2: segregation is favoured) and
the three bond lengths differ (σ_AA < σ_AB < σ_BB), so sites move as the species
redistribute: the mechanical deformation that (a) shows. The interior starts as a diffusion
couple — A-rich left half, B-rich right half, s_i = ±``contrast`` (for the sampler: every
site drawn independently with E[σ_i(0)] = s_i(0), the product measure that mean field
assumes) — and interdiffuses towards equilibrium.

Defaults (:class:`ChainParameters`) are a documented choice — the seed gives no numbers:
ε_AA = ε_BB = 1 eV, ε_AB = 0.985 eV (Ising coupling J = (ε_AA + ε_BB − 2ε_AB)/4 = 0.0075 eV
per first-neighbour bond, βJ = 0.15), σ = 1.000 / 1.015 / 1.030 Å, cut-off 2.7 Å (past the
second neighbour, smooth), k_B T = 0.05 eV. Why these: (i) the bond energy is 20 k_B T, so
the free end never leaves the cut-off in the sampler (at 5 k_B T it did); (ii) segregation
is favoured but the VG free energy stays convex in s (its curvature along the longest
conserved mode is ≈ 0.55 k_B T, against k_B T without interactions): the mean-field models then
have one equilibrium, the constrained minimiser of F, that all runs approach, and mean
field is a fair approximation of the stochastic model. Below the mean-field critical
temperature (larger βJ, or the 10 % size mismatch tried first, whose mean-field elastic
term alone makes F non-convex) the mean-field runs freeze into multi-domain patterns
that the exact 1-D model, which has no phase transition, does not show; and near it the
interdiffusion slows down (the curvature vanishes), so the runs would need far longer to
reach equilibrium. The couple equilibrates in ≈ 4 times its slowest mode's time,
≈ 80 τ (N = 16) and ≈ 350 τ (N = 32): hence ``t_end``. τ = 1 and
k_c = β/(2τ) (K1's linearisation of K2 at s = 0, seed eq. (40)); away from s = 0 the
two laws differ, which (a) shows early in the run. The study runs in float64 on whatever
device JAX finds.

Outputs (in the output folder): ``k1_n{N}.npz`` and ``k2_n{N}.npz`` (DMD trajectories,
:func:`dmdjax.dmd.load_trajectory`; the same for every size of (b) in ``sizes/``), ``spin_diffusion.npz`` (replica averages and their
standard errors), ``equilibrium.npz``, ``run.json`` (every parameter), ``summary.json``
(headline numbers, keys documented in :func:`run_chain_study`) and the figures
``fig_a_spacetime.png``, ``fig_b_sizes.png``, ``fig_c_sampler.png``,
``fig_d_equilibrium.png``.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import dmd, io, kinetics, spin_diffusion
from ..progress import logger
from ..free_energy import VGFreeEnergy
from ..neighbors import neighbor_list
from ..potentials import LennardJones
from ..relax import hessian_colouring, relax
from ..systems import chain
from ..state import DMDState
from ..units import temperature_from_thermal_energy

FIGURES = ("fig_a_spacetime.png", "fig_b_sizes.png", "fig_c_sampler.png", "fig_d_equilibrium.png")


@dataclasses.dataclass(frozen=True)
class ChainParameters:
    """Every parameter of the study (metal units: eV, Å; times in units of τ).

    Attributes:
        n_sites: chain length for (a), (c), (d). sizes: chain lengths for (b).
        kt: k_B T, eV. epsilon, sigma: LJ (AA, AB, BB) well depths (eV) and lengths (Å).
        contrast: initial s of the interior's left (+) and right (−) halves, in (0, 1).
        cutoff: LJ cut-off, Å (smooth switch from 0.8 × cut-off).
        kinetic_cutoff: exchange bonds are pairs closer than this, Å (first neighbours).
        tau: τ of K2 and of the sampler. mobility: k_c of K1 (``None``: β/(2τ)).
        t_end: final time of (a), (c), (d); t_end_sizes: of (b). n_frames: output times.
        replicas: sampler replicas. basin_steps, langevin_step: the scale-separated
        sampler's basin sampling (Langevin steps per candidate; fast step h).
        rtol, atol: the ODE tolerances; relax_tolerance: of (X, k) (eV/Å, eV).
        seed: PRNG seed of the sampler.
    """

    n_sites: int = 32
    sizes: tuple = (32, 64, 128, 256)
    kt: float = 0.05
    epsilon: tuple = (1.0, 0.985, 1.0)
    sigma: tuple = (1.0, 1.015, 1.03)
    contrast: float = 0.8
    cutoff: float = 2.7
    kinetic_cutoff: float = 1.5
    tau: float = 1.0
    mobility: float | None = None
    t_end: float = 1000.0
    t_end_sizes: float = 200.0
    n_frames: int = 41
    replicas: int = 128
    basin_steps: int = 2
    langevin_step: float = 2e-3
    rtol: float = 1e-6
    atol: float = 1e-8
    relax_tolerance: float = 1e-8
    seed: int = 0

    @classmethod
    def quick(cls, **overrides) -> "ChainParameters":
        """A reduced study (N = 16; sizes 16, 32; shorter runs; 64 replicas) for tests and CI."""
        values = dict(n_sites=16, sizes=(16, 32), t_end=200.0, t_end_sizes=100.0, n_frames=11, replicas=64)
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes) -> "ChainParameters":
        """A copy with ``changes``; unknown names and bad values raise ``ValueError``."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise ValueError(f"unknown chain parameter(s) {unknown}; known: {sorted(fields)}")
        coerced = {}
        for name, value in changes.items():
            default = getattr(self, name)
            try:
                if isinstance(default, tuple):
                    value = tuple(float(v) if isinstance(default[0], float) else int(v)
                                  for v in (value.split(",") if isinstance(value, str) else value))
                elif name == "mobility":
                    value = None if value in (None, "none", "None") else float(value)
                elif isinstance(default, bool) or not isinstance(default, (int, float)):
                    pass
                elif isinstance(default, int):
                    if isinstance(value, float) and not value.is_integer():
                        raise ValueError
                    value = int(value)
                else:
                    value = float(value)
            except (TypeError, ValueError):
                kind = ("a comma-separated list of numbers" if isinstance(default, tuple)
                        else "an integer" if isinstance(default, int) else "a number")
                raise ValueError(f"chain parameter {name} must be {kind}; got {value!r}") from None
            coerced[name] = value
        return dataclasses.replace(self, **coerced)._checked()

    def _checked(self) -> "ChainParameters":
        if self.n_sites < 4 or any(n < 4 for n in self.sizes):
            raise ValueError(f"chains need at least 4 sites; got n_sites={self.n_sites}, sizes={self.sizes}")
        if len(self.epsilon) != 3 or len(self.sigma) != 3:
            raise ValueError(f"epsilon and sigma are (AA, AB, BB) triples; got {self.epsilon}, {self.sigma}")
        for name in ("kt", "cutoff", "kinetic_cutoff", "tau", "t_end", "t_end_sizes", "langevin_step", "rtol",
                     "atol", "relax_tolerance"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number; got {value!r}")
        if min(self.epsilon) <= 0 or min(self.sigma) <= 0:
            raise ValueError(f"epsilon and sigma must be positive; got {self.epsilon}, {self.sigma}")
        if self.n_frames < 3 or self.replicas < 2 or self.basin_steps < 1:
            raise ValueError(f"need n_frames >= 3, replicas >= 2, basin_steps >= 1; got {self.n_frames}, "
                             f"{self.replicas}, {self.basin_steps}")
        if not 0 < self.contrast < 1:
            raise ValueError(f"contrast must lie in (0, 1); got {self.contrast!r}")
        if self.mobility is not None and not self.mobility > 0:
            raise ValueError(f"mobility must be positive or None; got {self.mobility!r}")
        return self

    def __post_init__(self):
        self._checked()

    @property
    def beta(self) -> float:
        """β = 1/k_BT, 1/eV."""
        return 1.0 / self.kt

    @property
    def temperature(self) -> float:
        """T in K: ``kt`` (the documented input, eV) converted at the boundary."""
        return float(temperature_from_thermal_energy(self.kt))

    @property
    def spacing(self) -> float:
        """Initial lattice spacing: the A–B pair minimum 2^{1/6} σ_AB, Å."""
        return 2.0 ** (1.0 / 6.0) * self.sigma[1]

    @property
    def k1_mobility(self) -> float:
        return self.beta / (2.0 * self.tau) if self.mobility is None else self.mobility


def load_parameters(path: str | os.PathLike, base: ChainParameters | None = None) -> ChainParameters:
    """Parameters from a TOML file (keys as in :class:`ChainParameters`), over ``base``."""
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {str(path)!r}")
    text = path.read_text()
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"config file {str(path)!r}: {err}") from None
    values = values.get("chain", values)
    base = base or ChainParameters()
    try:
        return base.replace(**values)
    except ValueError as err:
        message = str(err)
    for name, value in values.items():  # the key at fault, and its line
        try:
            base.replace(**{name: value})
        except ValueError as err:
            lines = [number for number, line in enumerate(text.splitlines(), 1) if line.split("=")[0].strip() == name]
            where = f", line {lines[0]}" if lines else ""
            raise ValueError(f"config file {str(path)!r}{where}: {err}") from None
    raise ValueError(f"config file {str(path)!r}: {message}")


class ChainModel(NamedTuple):
    """One chain: its potential, VG free energy, lattice ``(N, 1)`` Å, neighbour list,
    initial s ``(N,)``, the pinned atoms / pinned species ``(N,)`` and the initial
    :class:`~dmdjax.DMDState` (lattice, first-guess k, s(0))."""

    potential: LennardJones
    vg: VGFreeEnergy
    positions: jnp.ndarray
    neighbors: object
    s0: jnp.ndarray
    pinned: np.ndarray
    pinned_species: np.ndarray
    state: DMDState


def chain_model(p: ChainParameters, n_sites: int, dtype=jnp.float64) -> ChainModel:
    """The chain of ``n_sites`` sites described in the module docstring."""
    aa, ab, bb = p.epsilon
    saa, sab, sbb = p.sigma
    potential = LennardJones([[aa, ab], [ab, bb]], [[saa, sab], [sab, sbb]], species=("A", "B"), cutoff=p.cutoff)
    pinned = np.zeros(n_sites, bool)
    pinned[0] = True
    pinned_species = pinned.copy()
    pinned_species[-1] = True
    system = chain(n_sites, p.spacing, pinned=pinned)
    positions = system.positions.astype(dtype)
    neighbors = neighbor_list(positions, system.cell, potential.cutoff, skin=1.0)
    vg = VGFreeEnergy(potential, system.cell, p.temperature, n_sites, pinned=pinned,
                      pinned_species=pinned_species)
    s0 = jnp.asarray(initial_order_parameter(n_sites, p.contrast), dtype)
    return ChainModel(potential, vg, positions, neighbors, s0, pinned, pinned_species,
                      vg.initial_state(positions, s0, neighbors))


class SolveSetup(NamedTuple):
    """What :func:`dmdjax.dmd.solve` needs for a chain besides the model: the Hessian colouring
    (Newton relaxations), the state relaxed at s(0) (the start) and the kinetic bond graph."""

    colouring: object
    state: DMDState
    graph: kinetics.BondGraph


def solve_setup(p: ChainParameters, model: ChainModel, like: SolveSetup | None = None) -> SolveSetup:
    """:class:`SolveSetup` for ``model`` (relaxed to ``p.relax_tolerance``); ``like``, the setup of
    a chain on the same lattice (sites, pinned species, kinetic cut-off), lends its colouring and
    bond graph, so only the relaxation is done again."""
    vg, neighbors = model.vg, model.neighbors
    if like is None:
        colouring = hessian_colouring(vg, neighbors)
        graph = kinetics.bond_graph(model.positions, vg.cell, neighbors, p.kinetic_cutoff,
                                    pinned_species=vg.pinned_species)
    else:
        colouring, graph = like.colouring, like.graph
    start = relax(vg, model.state, neighbors, method="newton", colouring=colouring, tolerance=p.relax_tolerance)
    return SolveSetup(colouring, start.state, graph)


def initial_order_parameter(n_sites: int, contrast: float) -> np.ndarray:
    """s(0): +1 | +contrast … (left half) | −contrast … (right half) | −1; Σ of the interior 0
    (an odd interior's middle site is 0)."""
    s = np.zeros(n_sites)
    interior = n_sites - 2
    s[1:1 + interior // 2] = contrast
    s[n_sites - 1 - interior // 2:n_sites - 1] = -contrast
    s[0], s[-1] = 1.0, -1.0
    return s


def _times(t_end: float, n_frames: int) -> np.ndarray:
    return np.linspace(0.0, t_end, n_frames)


def run_dmd_models(p: ChainParameters, model: ChainModel, t_end: float, output: Path | None = None,
                   progress: bool = False) -> dict:
    """K1 (DMD, k_c) and K2 (mean-field spin-diffusion, exact swap rates) for one chain, written
    to ``output/k1_n{N}.npz`` and ``output/k2_n{N}.npz``."""
    vg, neighbors = model.vg, model.neighbors
    n_sites = model.positions.shape[0]
    laws = {"K1": dmd.GradientFlow(p.k1_mobility), "K2": dmd.SpinDiffusion(p.tau, "exact")}
    out = {}
    for name, law in laws.items():
        path = None if output is None else output / f"{name.lower()}_n{n_sites}.npz"
        out[name] = dmd.run(vg, model.state, neighbors, law, _times(t_end, p.n_frames),
                            kinetic_cutoff=p.kinetic_cutoff, rtol=p.rtol, atol=p.atol, tolerance=p.relax_tolerance,
                            relax_method="newton", max_steps=100_000, output=path, overwrite=True,
                            progress=progress)
    return out


def run_sampler(p: ChainParameters, model: ChainModel, start_positions, output: Path | None = None,
                progress: bool = False):
    """The replica average of the scale-separated spin-diffusion (basin-averaged rates), started
    from ``start_positions`` ``(N, 1)``, Å (the lattice: the Langevin steps relax x)."""
    potential, vg = model.potential, model.vg
    # The sampler's list is never rebuilt: a wide skin lets atoms wander 1.5 Å (the chain's
    # length fluctuates with the arrangement of A and B).
    wide = neighbor_list(start_positions, vg.cell, potential.cutoff, skin=3.0)
    sampler = spin_diffusion.spin_diffusion_sampler(
        potential, start_positions, vg.cell, wide, temperature=p.temperature, tau=p.tau,
        kinetic_cutoff=p.kinetic_cutoff, mode="scale-separated", rate_average="basin",
        basin_steps=p.basin_steps, langevin_step=p.langevin_step, pinned=model.pinned,
        pinned_species=model.pinned_species)
    # Product measure with E[σ_i(0)] = s_i(0): each replica keeps its own Σσ, the ensemble's mean is Σ s(0).
    rng = np.random.default_rng(p.seed)
    s0 = np.asarray(model.s0)
    spins = np.where(rng.random((p.replicas, p.n_sites)) < (1.0 + s0) / 2.0, 1.0, -1.0)
    path = None if output is None else output / "spin_diffusion.npz"
    return sampler.skin, spin_diffusion.sample(sampler, jax.random.PRNGKey(p.seed), spins, _times(p.t_end, p.n_frames),
                                               n_replicas=p.replicas, output=path, overwrite=True, progress=progress)


def interface(positions: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """Centre and width of the interior's composition drop: the mean and the standard deviation
    of −Δs over the bonds between interior sites, placed at the bond midpoints (Å). For a tanh
    profile of width w the width is π w / (2√3) ≈ 0.91 w. NaN when the drop is below 0.05 (no
    interface: e.g. a flat, mixed profile)."""
    x = np.asarray(positions, float).reshape(-1)[1:-1]
    drop = -np.diff(np.asarray(s, float)[1:-1])
    midpoints = 0.5 * (x[1:] + x[:-1])
    total = drop.sum()
    if not total > 0.05:
        return float("nan"), float("nan")
    centre = float(drop @ midpoints / total)
    return centre, float(np.sqrt(max(drop @ (midpoints - centre) ** 2 / total, 0.0)))


def run_chain_study(p: ChainParameters, output: str | os.PathLike, *, overwrite: bool = False,
                    progress: bool = True, log=logger.info) -> dict:
    """Run the whole study, write every file, and return the summary.

    The main K1/K2 runs, the sizes of (b), the sampler and the equilibrium run concurrently
    in threads (XLA compiles and runs release the GIL), then the figures are drawn.

    ``summary.json`` keys: ``device``, ``platform``, ``dtype``; ``wall_time_s`` (total and per
    part: ``dmd``, ``sizes``, ``sampler``, ``equilibrium`` — these overlap — and ``figures``);
    ``n_sites``, ``sizes``, ``replicas``; ``models``: per model (``K1``, ``K2``, ``spin_diffusion``,
    ``equilibrium``) the final ``free_energy`` (eV; the sampler's at s = E[σ]),
    ``interface_position`` and ``interface_width`` (Å, :func:`interface`),
    ``max_abs_diff_equilibrium`` and ``rms_diff_equilibrium`` (vs the constrained
    minimiser of F), ``chain_length`` (Å, free end − pinned end); ``sampler_vs_k2``:
    ``max_abs_diff`` and ``rms_diff`` of E[σ] − s_K2 over all output times and sites, and
    ``max_z`` (the same in units of the standard error; entries with a zero standard error
    left out) and ``rms_z`` (≈ 1 if the difference were noise alone); ``sampler_vs_equilibrium``:
    the same four numbers for E[σ] at the last time against the minimiser s* of F (interior
    sites); ``sizes_central_max_diff``: per N, max |s_K2 − s_K2(largest N)| over the 16 sites
    around the middle at the last time of (b); ``sigma_conservation``: the largest
    |Σ s(t) − Σ s(0)| of each DMD run (``K1_n32``, … for (b); ``K1_n32_t1000``, … for the
    main runs when they are not (b)'s).

    Raises:
        FileExistsError: ``output`` exists and is not empty, unless ``overwrite``.
    """
    output = Path(output)
    run_info = io.open_study_folder(output, {"study": "chain", "parameters": dataclasses.asdict(p),
                                             "k1_mobility": p.k1_mobility, "spacing": p.spacing},
                                    overwrite=overwrite)
    walls, start = {}, time.perf_counter()
    lock, user_log = threading.Lock(), log

    def log(message):  # the parts log from threads: one message at a time
        with lock:
            user_log(message)

    def timed(part, function, *args):
        tick = time.perf_counter()
        result = function(*args)
        walls[part] = time.perf_counter() - tick
        return result

    def sizes_part():
        runs = {}
        for n in sorted(p.sizes, reverse=True):  # the main thread compiles N = n_sites meanwhile
            if n == p.n_sites and p.t_end_sizes == p.t_end:
                continue  # the main runs serve (written to sizes/ below)
            log(f"  sizes: N = {n} to t = {p.t_end_sizes} τ")
            runs[n] = run_dmd_models(p, model if n == p.n_sites else chain_model(p, n), p.t_end_sizes,
                                     output / "sizes")
        return runs

    def equilibrium_part():
        result = dmd.equilibrium(model.vg, model.state, model.neighbors, relax_method="newton",
                                 relax_tolerance=p.relax_tolerance)
        io.save_npz(output / "equilibrium.npz", {
            "order_parameter": np.asarray(result.order_parameter), "positions": np.asarray(result.positions),
            "stiffness": np.asarray(result.stiffness), "free_energy": np.asarray(result.free_energy)},
            {"residual": result.residual, "iterations": result.iterations})
        return result

    log(f"chain study: N = {p.n_sites}, k_BT = {p.kt} eV, t = 0..{p.t_end} τ -> {output}/")
    model = chain_model(p, p.n_sites)
    (output / "sizes").mkdir(exist_ok=True)
    # The parts are independent: in threads, one part's XLA compilation or run overlaps another's.
    with ThreadPoolExecutor(max_workers=3) as pool:
        main_future = pool.submit(timed, "dmd", run_dmd_models, p, model, p.t_end, output, progress)
        sizes_future = pool.submit(timed, "sizes", sizes_part)
        equilibrium_future = pool.submit(timed, "equilibrium", equilibrium_part)
        log(f"  scale-separated spin-diffusion: {p.replicas} replicas")
        skin, sampled = timed("sampler", run_sampler, p, model, model.positions, output, False)
        main = main_future.result()
        by_size = {n: main for n in p.sizes if n == p.n_sites and p.t_end_sizes == p.t_end}
        for n, runs in by_size.items():
            for law, trajectory in runs.items():
                trajectory.save(output / "sizes" / f"{law.lower()}_n{n}.npz")
        by_size.update(sizes_future.result())
        by_size = dict(sorted(by_size.items()))
        equilibrium = equilibrium_future.result()
    vg, neighbors = model.vg, model.neighbors
    sampled_state = relax(vg, main["K2"].state[-1].replace(order_parameter=jnp.asarray(sampled.order_parameter[-1])),
                          neighbors, method="newton", tolerance=p.relax_tolerance)

    s_eq = np.asarray(equilibrium.order_parameter)
    finals = {law: (np.asarray(run.positions[-1]), np.asarray(run.order_parameter[-1]), float(run.free_energy[-1]))
              for law, run in main.items()}
    finals.update({
        "spin_diffusion": (np.asarray(sampled_state.positions), np.asarray(sampled.order_parameter[-1]),
                           float(sampled_state.free_energy)),
        "equilibrium": (np.asarray(equilibrium.positions), s_eq, float(equilibrium.free_energy)),
    })
    models = {}
    for name, (x, s, f) in finals.items():
        x0, width = interface(x, s)
        models[name] = {"free_energy": f, "interface_position": x0, "interface_width": width,
                        "max_abs_diff_equilibrium": float(np.max(np.abs(s - s_eq))),
                        "rms_diff_equilibrium": float(np.sqrt(np.mean((s - s_eq) ** 2))),
                        "chain_length": float(x[-1, 0] - x[0, 0])}
    mean, error = np.asarray(sampled.order_parameter), np.asarray(sampled.order_parameter_error)
    largest = max(by_size)
    reference = _central_profile(by_size[largest]["K2"], largest)
    runs = [(f"{law}_n{n}", t) for n, laws in by_size.items() for law, t in laws.items()]
    runs += [(f"{law}_n{p.n_sites}_t{p.t_end:g}", t) for law, t in main.items() if main is not by_size.get(p.n_sites)]
    conservation = {name: float(np.max(np.abs(np.asarray(t.order_parameter).sum(1)
                                              - float(np.asarray(t.order_parameter)[0].sum())))) for name, t in runs}

    tick = time.perf_counter()
    from . import chain_figures

    chain_figures.spacetime(output / FIGURES[0], main, p)
    chain_figures.sizes(output / FIGURES[1], by_size, p)
    chain_figures.sampler(output / FIGURES[2], main, sampled, p)
    chain_figures.equilibrium(output / FIGURES[3], finals, sampled, models)
    walls["figures"] = time.perf_counter() - tick
    walls["total"] = time.perf_counter() - start

    summary = {"study": "chain", "device": run_info["device"], "platform": run_info["platform"],
               "dtype": run_info["dtype"], "wall_time_s": walls, "n_sites": p.n_sites, "sizes": list(p.sizes),
               "replicas": p.replicas, "t_end": p.t_end, "models": models,
               "sampler_vs_k2": {**_compare(mean - np.asarray(main["K2"].order_parameter), error),
                                 "final_max_abs_diff": float(np.max(np.abs(mean[-1] - finals["K2"][1])))},
               "sampler_vs_equilibrium": _compare(mean[-1, 1:-1] - s_eq[1:-1], error[-1, 1:-1]),
               "sizes_central_max_diff": {str(n): float(np.max(np.abs(_central_profile(runs["K2"], n) - reference)))
                                          for n, runs in by_size.items()},
               "sampler_skin": float(skin), "sigma_conservation": conservation,
               "equilibrium_residual_ev": equilibrium.residual}
    summary = io.write_study_summary(output, summary)
    log(format_summary(summary, output))
    return summary


def _compare(difference: np.ndarray, error: np.ndarray) -> dict:
    """max and rms of a difference, and of it in units of its standard error (where that is > 0)."""
    z = difference[error > 0] / error[error > 0]
    return {"max_abs_diff": float(np.max(np.abs(difference))), "rms_diff": float(np.sqrt(np.mean(difference ** 2))),
            "max_z": float(np.max(np.abs(z))), "rms_z": float(np.sqrt(np.mean(z ** 2)))}


def _central_profile(trajectory, n_sites, half_width=8):
    """The last s of the 2 × half_width sites around the chain's middle."""
    middle = n_sites // 2
    return np.asarray(trajectory.order_parameter)[-1, middle - half_width:middle + half_width]


def format_summary(summary: dict, output: Path) -> str:
    lines = [f"\n{'model':16s} {'F (eV)':>12s} {'x0 (Å)':>9s} {'w (Å)':>8s} {'L (Å)':>8s} "
             f"{'max|s-s*|':>10s} {'rms|s-s*|':>10s}"]
    for name, m in summary["models"].items():
        lines.append(f"{name:16s} {m['free_energy']:12.5f} {m['interface_position']:9.3f} "
                     f"{m['interface_width']:8.3f} {m['chain_length']:8.3f} {m['max_abs_diff_equilibrium']:10.4f} "
                     f"{m['rms_diff_equilibrium']:10.4f}")
    c = summary["sampler_vs_k2"]
    lines.append(f"sampler - K2 over all times: max |Δ| = {c['max_abs_diff']:.3f}, rms = {c['rms_diff']:.3f}, "
                 f"max |Δ|/SE = {c['max_z']:.1f}, rms Δ/SE = {c['rms_z']:.2f}")
    c = summary["sampler_vs_equilibrium"]
    lines.append(f"sampler - s* at the last time: max |Δ| = {c['max_abs_diff']:.3f}, max |Δ|/SE = {c['max_z']:.1f}, "
                 f"rms Δ/SE = {c['rms_z']:.2f}")
    sizes = summary["sizes_central_max_diff"]
    lines.append("sizes, K2 at the middle vs the largest N: "
                 + ", ".join(f"N = {n}: {value:.3f}" for n, value in sizes.items()))
    lines.append(f"wall time {summary['wall_time_s']['total']:.1f} s on {summary['device']} "
                 f"({summary['platform']}); files in {output}/: {', '.join(summary['files'])}")
    return "\n".join(lines)
