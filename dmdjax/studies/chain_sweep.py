r"""A parameter sweep of the chain study's DMD runs as one batched, sharded call (DESIGN.md §8).

``dmdjax chain --sweep beta=16,20,25`` runs K1 (DMD, k_c) and K2 (mean-field spin-diffusion)
on the chain of :mod:`dmdjax.studies.chain` for every value of one parameter: the B chains are
stacked on a leading axis (:func:`dmdjax.ensemble.stack`) and integrated by one
``jax.vmap`` of :func:`dmdjax.dmd.solve` per law, the batch sharded over the devices when
there are several (:func:`dmdjax.ensemble.batch_sharding`).

Sweepable parameters (:data:`SWEEPABLE`): ``kt`` (k_BT, eV), ``beta`` (1/k_BT, 1/eV), ``tau``
(τ of K2; k_c follows as β/(2τ) unless ``mobility`` is set), ``mobility`` (k_c of K1),
``contrast`` (the initial couple's ±s) and ``epsilon_ab`` (ε_AB, eV). The lattice is the same for
every value (it depends on σ_AB only), so one neighbour list and one bond graph serve the batch.

Outputs: ``sweep.npz`` (``values``, ``time``, ``k1`` and ``k2``: s_i(t) ``(B, T, N)``,
``sites``: the lattice positions, Å), ``run.json``, ``summary.json`` (keys in
:func:`run_chain_sweep`) and ``fig_sweep.png``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import dmd, ensemble, io
from ..progress import logger
from .chain import ChainParameters, chain_model, interface, solve_setup

SWEEPABLE = ("kt", "beta", "tau", "mobility", "contrast", "epsilon_ab")


def parse_sweep(text: str) -> tuple[str, np.ndarray]:
    """``"NAME=v1,v2,..."`` or ``"NAME=start:stop:count"`` (inclusive linspace) → (name, values).

    Raises:
        ValueError: an unknown name, a malformed list, fewer than one value or a non-finite one.
    """
    name, sep, spec = text.partition("=")
    name = name.strip()
    if not sep or not spec.strip():
        raise ValueError(f"--sweep needs NAME=VALUES (e.g. beta=16,20,25 or kt=0.04:0.06:3); got {text!r}")
    if name not in SWEEPABLE:
        raise ValueError(f"cannot sweep {name!r}; sweepable: {', '.join(SWEEPABLE)}")
    try:
        if ":" in spec:
            start, stop, count = spec.split(":")
            if int(count) < 1:
                raise ValueError
            values = np.linspace(float(start), float(stop), int(count))
        else:
            values = np.array([float(v) for v in spec.split(",")])
    except ValueError:
        raise ValueError(f"--sweep values must be numbers 'v1,v2,...' or 'start:stop:count'; got {spec!r}") from None
    if not np.all(np.isfinite(values)):
        raise ValueError(f"--sweep values must be finite; got {values.tolist()}")
    return name, values


def swept_parameters(p: ChainParameters, name: str, value: float) -> ChainParameters:
    """``p`` with the swept parameter set to ``value`` (validated as :meth:`ChainParameters.replace`)."""
    if name == "beta":
        if not value > 0:
            raise ValueError(f"beta must be positive; got {value!r}")
        return p.replace(kt=1.0 / value)
    if name == "epsilon_ab":
        return p.replace(epsilon=(p.epsilon[0], value, p.epsilon[2]))
    if name not in SWEEPABLE:
        raise ValueError(f"cannot sweep {name!r}; sweepable: {', '.join(SWEEPABLE)}")
    return p.replace(**{name: value})


@contextlib.contextmanager
def _heartbeat(label: str, log, every: float):
    """Log ``label: still running after N s`` every ``every`` seconds until the block ends (a
    batched solve is one call: there is no step count to show while it runs)."""
    done = threading.Event()
    start = time.perf_counter()

    def beat():
        while not done.wait(every):
            log(f"  {label}: still running after {time.perf_counter() - start:.0f} s")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@eqx.filter_jit
def _batched_solve(laws, members, neighbors, graph, times, rtol, atol, tolerance, colouring):
    """The sweep's batch: ``dmd.solve`` vmapped over (law, (vg, state)) members. At module level,
    so a later sweep of the same shapes reuses the compilation."""

    def one(law, member):
        vg, state = member
        return dmd.solve(vg, state, neighbors, law, graph, times, rtol=rtol, atol=atol, max_steps=100_000,
                         tolerance=tolerance, relax_method="newton", colouring=colouring)

    return jax.vmap(one)(laws, members)


def run_chain_sweep(p: ChainParameters, name: str, values, output, *, overwrite: bool = False,
                    log=logger.info, progress: bool = True, heartbeat: float = 30.0) -> dict:
    """K1 and K2 on the ``p.n_sites`` chain for every value of ``name``, to ``p.t_end``, as batches.

    ``summary.json`` keys: ``study`` ("chain-sweep"), ``parameter``, ``values``, ``batch``,
    ``device``, ``platform``, ``devices`` (the batch was split over this many), ``dtype``,
    ``wall_time_s`` (``setup``: the B initial relaxations; ``K1``, ``K2``: each law's batched call,
    compile included; ``total``), ``n_sites``, ``t_end``; ``runs``: per value ``value``,
    ``k1_mobility``, ``num_steps`` and ``sigma_conservation`` (max |Σs(t) − Σs(0)|) per law,
    ``interface_width`` per law at ``t_end`` (Å, :func:`~dmdjax.studies.chain.interface` at the
    lattice sites), ``k1_k2_max_abs_diff`` (max over sites and times of |s_K1 − s_K2|).

    With ``progress``, each batched call logs a line every ``heartbeat`` seconds while it runs.

    Raises:
        FileExistsError: ``output`` exists and is not empty, unless ``overwrite``.
        ValueError: a bad value (named). dmd.DMDError: a run failed (the value is named).
    """
    output = Path(output)
    values = np.asarray(values, float).reshape(-1)
    chains = [swept_parameters(p, name, float(v)) for v in values]  # validates every value before any work
    run = io.open_study_folder(output, {"study": "chain-sweep", "parameter": name, "values": values,
                                        "parameters": dataclasses.asdict(p)}, overwrite=overwrite)
    sharding = ensemble.batch_sharding(len(values))
    walls, start = {}, time.perf_counter()
    log(f"chain sweep: {name} = {values.tolist()} (B = {len(values)}, "
        f"{len(jax.devices()) if sharding is not None else 1} device(s)), N = {p.n_sites}, t = 0..{p.t_end} τ")

    models = [chain_model(q, q.n_sites) for q in chains]
    first = models[0]
    setup = solve_setup(chains[0], first)  # colouring and bond graph: the lattice is the same for every value
    starts = [setup] + [solve_setup(q, m, like=setup) for q, m in zip(chains[1:], models[1:])]
    batch = ensemble.stack([(m.vg, s.state) for m, s in zip(models, starts)])
    laws = {"K1": ensemble.stack([dmd.GradientFlow(q.k1_mobility) for q in chains]),
            "K2": ensemble.stack([dmd.SpinDiffusion(q.tau, "exact") for q in chains])}
    if sharding is not None:
        batch, laws = jax.device_put((batch, laws), sharding)
    times = jnp.linspace(0.0, p.t_end, p.n_frames)
    walls["setup"] = time.perf_counter() - start

    def solve(law, member):
        return _batched_solve(law, member, first.neighbors, setup.graph, times, p.rtol, p.atol, p.relax_tolerance,
                              setup.colouring)

    solutions = {}
    for law, stacked in laws.items():
        tick = time.perf_counter()
        log(f"  {law}: {len(values)} runs as one batched call (compiling, then up to 100000 steps each)...")
        with _heartbeat(law, log, heartbeat) if progress else contextlib.nullcontext():
            solutions[law] = jax.block_until_ready(solve(stacked, batch))
        walls[law] = time.perf_counter() - tick
        failed = values[~np.asarray(solutions[law].ok)]
        if failed.size:
            raise dmd.DMDError(f"{law} failed for {name} = {failed.tolist()} (non-finite s, s outside (-1, 1) "
                               f"or more than 100000 steps)")
        log(f"  {law}: {len(values)} runs in {walls[law]:.1f} s (compile included)")

    s = {law: np.asarray(solution.order_parameter) for law, solution in solutions.items()}
    sites = np.asarray(first.positions)
    io.save_npz(output / "sweep.npz", {"values": values, "time": np.asarray(times), "k1": s["K1"], "k2": s["K2"],
                                       "sites": sites}, {"parameter": name})
    runs = []
    for b, (value, q) in enumerate(zip(values, chains)):
        runs.append({
            "value": float(value), "k1_mobility": q.k1_mobility,
            "num_steps": {law: int(solutions[law].num_steps[b]) for law in s},
            "sigma_conservation": {law: float(np.max(np.abs(s[law][b].sum(1) - s[law][b, 0].sum()))) for law in s},
            "interface_width": {law: interface(sites, s[law][b, -1])[1] for law in s},
            "k1_k2_max_abs_diff": float(np.max(np.abs(s["K1"][b] - s["K2"][b]))),
        })
    _figure(output / "fig_sweep.png", name, values, np.asarray(times), sites, s)
    walls["total"] = time.perf_counter() - start
    summary = {"study": "chain-sweep", "parameter": name, "values": values.tolist(), "batch": len(values),
               "device": run["device"], "platform": run["platform"],
               "devices": len(jax.devices()) if sharding is not None else 1, "dtype": run["dtype"],
               "wall_time_s": walls, "n_sites": p.n_sites, "t_end": p.t_end, "runs": runs}
    summary = io.write_study_summary(output, summary)
    log(format_sweep(summary))
    return summary


def format_sweep(summary: dict) -> str:
    lines = [f"\n{summary['parameter']:>12s} {'k_c':>8s} {'steps K1':>9s} {'steps K2':>9s} {'w K1 (Å)':>9s} "
             f"{'w K2 (Å)':>9s} {'max|K1-K2|':>11s} {'max|ΔΣs|':>9s}"]
    for r in summary["runs"]:
        lines.append(f"{r['value']:12.5g} {r['k1_mobility']:8.3f} {r['num_steps']['K1']:9d} {r['num_steps']['K2']:9d} "
                     f"{r['interface_width']['K1']:9.3f} {r['interface_width']['K2']:9.3f} "
                     f"{r['k1_k2_max_abs_diff']:11.4f} {max(r['sigma_conservation'].values()):9.1e}")
    w = summary["wall_time_s"]
    lines.append(f"wall time {w['total']:.1f} s (K1 {w['K1']:.1f} s, K2 {w['K2']:.1f} s for B = {summary['batch']}) "
                 f"on {summary['devices']} × {summary['device']} ({summary['platform']})")
    return "\n".join(lines)


def _figure(path: Path, name: str, values, times, sites, s: dict) -> None:
    """Final profiles (K2 solid, K1 dashed) and the interface width vs time, one colour per value."""
    from .figures import pyplot

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    colours = plt.cm.viridis(np.linspace(0.0, 0.9, len(values)))
    x = sites[:, 0]
    for b, (value, colour) in enumerate(zip(values, colours)):
        left.plot(x, s["K2"][b, -1], "-", color=colour, label=f"{name} = {value:.4g}")
        left.plot(x, s["K1"][b, -1], "--", color=colour)
        for law, style in (("K2", "-"), ("K1", "--")):
            right.plot(times, [interface(sites, profile)[1] for profile in s[law][b]], style, color=colour)
    left.set_xlabel("lattice site position (Å)")
    left.set_ylabel(f"s_i at t = {times[-1]:g} τ")
    left.set_title("final profiles: K2 (solid), K1 (dashed)", fontsize=10)
    left.legend(fontsize=8)
    right.set_xlabel("t (τ)")
    right.set_ylabel("interface width (Å)")
    right.set_title("interdiffusion: K2 (solid), K1 (dashed)", fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)
