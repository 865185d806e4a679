"""The ``dmdjax`` command.

Sub-commands:

* ``dmdjax build`` — write an fcc/bcc crystal (optionally a random alloy) as extended XYZ;
* ``dmdjax energy`` — energy, forces and stress of any structure ASE reads;
* ``dmdjax chain`` — the chain study (K2 vs K1 vs the spin-diffusion replica average);
* ``dmdjax alloy surface`` — Mg segregation to a free (100) surface of Al–Mg (K3, EAM).
* ``dmdjax alloy sampler`` — the spin-diffusion sampler on the same slab against DMD and Langmuir–McLean.

Bad input and failures end with one line ``dmdjax: error: ...`` on stderr and exit status 2
(3 when a DMD run or a relaxation does not converge; ``--debug`` shows the traceback); no
output file is written half-way, and no existing one is replaced without ``--overwrite``. The command runs in float64 unless ``--float32`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def _add_energy(sub) -> None:
    p = sub.add_parser(
        "energy",
        help="energy, forces and stress of a structure",
        description="Energy (eV), forces (eV/Å) and stress (Voigt xx yy zz yz xz xy, eV/Å³, ASE's sign: "
        "negative under compression) of a structure read by ASE, species from the file.",
    )
    p.add_argument("structure", help="structure file (any format ASE reads; extended XYZ recommended)")
    p.add_argument("--format", default=None,
                   help="the file's ASE format name (extxyz, vasp, cif, lammps-data, ...; default guessed from the name)")
    p.add_argument("--atom-style", default=None,
                   help="with --format lammps-data: the LAMMPS atom style (atomic, charge, full, ...; default guessed)")
    p.add_argument("--types", type=lambda text: [t.strip() for t in text.split(",") if t.strip()], default=None,
                   help="with --format lammps-data: the elements of atom types 1, 2, ... (default the potential's "
                   "species in order, like pair_coeff * * file Al Mg)")
    p.add_argument("--potential", required=True,
                   help="EAM file (.eam, .alloy/.setfl, .fs) or a bundled name, e.g. AlMg_Mendelev2009")
    p.add_argument("--form", choices=["eam", "alloy", "fs"], help="EAM file format (default: from the suffix)")
    p.add_argument("--skin", type=float, default=0.5, help="neighbour-list skin, Å (default 0.5)")
    p.add_argument("--float32", action="store_true", help="compute in single precision")
    p.add_argument("--devices", type=int, default=None,
                   help="split the atoms over at most this many devices (default: every visible one; after "
                   "jax.distributed.initialize, every process's); the most that divide N into slabs thicker than the "
                   "interaction range are used")
    p.add_argument("--distributed", action="store_true",
                   help="first join the other processes of a multi-host job (jax.distributed.initialize(), which "
                   "detects SLURM and other launchers); only process 0 prints and writes")
    p.add_argument("--temperature", type=float, default=None,
                   help="T in K: evaluate the variational-Gaussian free energy F(X, k, s) instead")
    p.add_argument("--relax", action="store_true", help="with --temperature: minimise F over (X, k) first")
    p.add_argument("--quadrature", choices=["gauss-hermite", "third-degree"], default="gauss-hermite")
    p.add_argument("--nodes", type=int, default=8, help="Gauss-Hermite nodes (default 8)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="relaxation tolerance on max |dF/dX| (eV/Å) and |k dF/dk| (eV) (default 1e-6)")
    p.add_argument("--output", default=None,
                   help="with --temperature: write the (relaxed) state as extended XYZ with columns c_<A>, c_<B> "
                   "(concentrations), k (eV/Å²), mu (dF/ds, eV, s = c_A - c_B)")
    p.add_argument("--overwrite", action="store_true", help="allow --output to replace an existing file")
    p.add_argument("--json", action="store_true", help="print one JSON object (energy, forces, stress; "
                   "with --temperature: free_energy, positions, stiffness, chemical_potential, iterations, converged)")
    p.set_defaults(run=_run_energy)


def _run_energy(args) -> int:
    import jax
    import jax.numpy as jnp

    import dmdjax as dj

    if args.tolerance is not None and not (np.isfinite(args.tolerance) and args.tolerance > 0):
        raise ValueError(f"--tolerance must be finite and > 0; got {args.tolerance!r}")
    if not (np.isfinite(args.skin) and args.skin >= 0):
        raise ValueError(f"--skin must be finite and >= 0 Å; got {args.skin!r}")
    if args.nodes < 1:
        raise ValueError(f"--nodes must be a positive integer; got {args.nodes!r}")
    if args.output:
        _check_output_file(args.output, args.overwrite)
    if args.devices is not None and args.devices < 1:
        raise ValueError(f"--devices must be >= 1; got {args.devices!r}")
    if args.distributed:
        jax.distributed.initialize()
        if jax.process_index() > 0:  # one report: process 0's
            sys.stdout = open(os.devnull, "w")
    potential = dj.load_eam(args.potential, form=args.form)
    system, atoms = dj.io.read_structure(args.structure, species_names=potential.species, format=args.format,
                                         atom_style=args.atom_style, types=args.types)
    # One large system over several devices: atoms in slabs (the VG list reaches ~1 Å further).
    margin = 0.0 if args.temperature is None else 1.0
    decomposition, order = dj.domain.plan(system.positions, system.cell, potential.cutoff + args.skin + margin,
                                          args.devices)
    if decomposition is not None:
        system = dj.System(*(jnp.asarray(np.asarray(a)[order]) for a in (system.positions, system.species)),
                           system.cell, jnp.asarray(np.asarray(system.pinned)[order]), system.species_names)
        atoms = atoms[order]
    devices = {"devices": 1 if decomposition is None else decomposition.n_shards, "processes": jax.process_count()}
    if args.temperature is not None:
        return _run_free_energy(args, potential, system, atoms, decomposition, order, devices)
    if args.relax or args.output:
        raise ValueError("--relax and --output need --temperature")
    if decomposition is None:
        result = dj.evaluate(potential, system, skin=args.skin)
    else:
        nbrs = dj.neighbor_list(system.positions, system.cell, potential.cutoff, skin=args.skin,
                                decomposition=decomposition)
        result = dj.evaluate(potential, dj.domain.shard(system, decomposition, n=system.n_atoms), nbrs)
    stress = None if result.stress is None else np.asarray(result.stress).tolist()
    forces = _original_order(result.forces, order)
    if args.json:
        print(json.dumps({
            "energy": float(result.energy),
            "forces": forces.tolist(),
            "stress": stress,
            **devices,
            "units": {"energy": "eV", "forces": "eV/Angstrom", "stress": "eV/Angstrom^3 (Voigt, ASE sign)"},
        }))
        return 0
    print(f"structure   {args.structure}  ({system.n_atoms} atoms, species {list(system.species_names)}, "
          f"pbc {list(system.cell.pbc)}; {devices['devices']} device(s), {devices['processes']} process(es))")
    print(f"potential   {potential.source}  (cut-off {potential.cutoff} Å)")
    print(f"energy      {float(result.energy):.10f} eV  ({float(result.energy) / system.n_atoms:.6f} eV/atom)")
    print(f"max |force| {np.linalg.norm(forces, axis=1).max():.6e} eV/Å")
    if stress is None:
        print("stress      (not defined: the cell is not fully periodic)")
    else:
        print("stress      " + " ".join(f"{s:.6e}" for s in stress) + " eV/Å³ (xx yy zz yz xz xy)")
    return 0


def _original_order(values, order) -> np.ndarray:
    """Per-atom ``values`` of the atoms in ``order`` back in the structure's order (host array)."""
    from ._validate import host_array

    values = host_array(values)
    out = np.empty_like(values)
    out[order] = values
    return out


def _run_free_energy(args, potential, system, atoms, decomposition, order, devices) -> int:
    import jax
    import jax.numpy as jnp

    import dmdjax as dj

    n = system.n_atoms
    read = dj.io.read_concentrations(atoms, potential.species, repr(args.structure))
    if read is None:  # a plain configuration: each site holds its own species
        species = (potential.species[0], potential.species[1] if potential.n_species > 1 else potential.species[0])
        concentration = (np.asarray(system.species) == 0).astype(float)
        foreign = sorted({potential.species[i] for i in np.asarray(system.species)} - set(species))
        if foreign:
            raise ValueError(f"{args.structure!r} holds {foreign} besides {list(species)}: the mean field takes two "
                             "species; give their concentrations as columns c_<species>")
    else:
        concentration, species = read
    # Sites that hold one species exactly (c = 0 or 1) are pinned species; the others evolve.
    pinned_species = (concentration == 0.0) | (concentration == 1.0)
    order_parameter = jnp.asarray(2.0 * concentration - 1.0, dtype=system.positions.dtype)
    vg = dj.VGFreeEnergy(potential, system.cell, args.temperature, n, pinned=system.pinned,
                         pinned_species=pinned_species, species=species, quadrature=args.quadrature,
                         nodes=args.nodes)
    nbrs = dj.neighbor_list(system.positions, system.cell, potential.cutoff, skin=args.skin)
    dj.energy.check_separation(potential, system.positions, system.cell, nbrs)  # before k is guessed from V
    if "k" in atoms.arrays:  # a state written by dmdjax: its stiffnesses (the warm start of --relax)
        stiffness = jnp.asarray(np.asarray(atoms.arrays["k"], dtype=float), system.positions.dtype)
        state = dj.DMDState(system.positions, stiffness, order_parameter)
        vg.check(state, nbrs)
    else:
        state = vg.initial_state(system.positions, order_parameter, nbrs)
    if decomposition is not None:  # the VG list (its reach at the first k) over the devices
        nbrs = vg.neighbor_list(system.positions, state.stiffness, skin=args.skin, decomposition=decomposition)
        vg, state = dj.domain.shard((vg, state, nbrs), decomposition)[:2]
    if args.relax:
        result = dj.relax(vg, state, nbrs, tolerance=args.tolerance, throw=False)
        state, nbrs = result.state, result.neighbors
        iterations, converged, norm = int(result.iterations), bool(result.converged), float(result.gradient_norm)
    else:
        iterations, converged, norm = 0, False, float("nan")
    nbrs = vg.covering_neighbors(state, nbrs)  # the Gaussians' reach at k and T
    free_energy = float(vg(state, nbrs))
    mu = _original_order(vg.chemical_potential(state, nbrs), order)
    positions, stiffness = (_original_order(a, order) for a in (state.positions, state.stiffness))
    concentration = _original_order(concentration, order)
    if args.output and jax.process_index() == 0:
        frame = dj.System(positions, _original_order(system.species, order), system.cell,
                          _original_order(system.pinned, order), system.species_names)
        dj.io.write_extxyz(args.output, frame,
                           arrays={**dj.io.concentration_arrays(concentration, species), "k": stiffness, "mu": mu},
                           info={"temperature": args.temperature, "total_free_energy": free_energy,
                                 "order_parameter_species": ",".join(species), **devices})
    if args.json:
        print(json.dumps({
            "free_energy": free_energy, "positions": np.asarray(positions).tolist(),
            "stiffness": np.asarray(stiffness).tolist(), "chemical_potential": mu.tolist(),
            "iterations": iterations, "converged": converged, "gradient_norm": norm,
            "temperature": args.temperature, **devices,
            "units": {"free_energy": "eV", "positions": "Angstrom", "stiffness": "eV/Angstrom^2",
                      "chemical_potential": "eV (dF/ds)"},
        }))
        return 0 if converged or not args.relax else 3
    print(f"structure    {args.structure}  ({n} atoms, species {list(system.species_names)}, T = {args.temperature} K; "
          f"{devices['devices']} device(s), {devices['processes']} process(es))")
    print(f"free energy  {free_energy:.10f} eV  ({free_energy / n:.6f} eV/atom), "
          f"{args.quadrature}{'' if args.quadrature != 'gauss-hermite' else f' m={args.nodes}'}")
    print(f"stiffness    mean {float(np.mean(stiffness)):.5f} eV/Å², range [{float(np.min(stiffness)):.5f}, "
          f"{float(np.max(stiffness)):.5f}]")
    if args.relax:
        print(f"relaxation   {'converged' if converged else 'NOT converged'} after {iterations} iterations "
              f"(max gradient {norm:.2e})")
    else:
        print("relaxation   none (k from the Einstein first guess tr∇²V/d; add --relax to minimise over X, k)")
    if args.output:
        print(f"wrote        {args.output}")
    return 0 if converged or not args.relax else 3


def _add_build(sub) -> None:
    p = sub.add_parser("build", help="write a cubic crystal (fcc/bcc), optionally a random alloy",
                       description="Write an fcc or bcc crystal of cubic cells as extended XYZ.")
    p.add_argument("lattice", choices=["fcc", "bcc"])
    p.add_argument("--element", default="Al", help="host element (default Al)")
    p.add_argument("--lattice-constant", type=float, default=4.05, help="Å (default 4.05)")
    p.add_argument("--repeat", type=int, nargs=3, default=[4, 4, 4], metavar=("NX", "NY", "NZ"))
    p.add_argument("--solute", default=None, help="random substitution ELEMENT:FRACTION, e.g. Mg:0.06")
    p.add_argument("--rattle", type=float, default=0.0, help="Gaussian noise on positions, Å")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="output file (.xyz, extended XYZ)")
    p.add_argument("--overwrite", action="store_true", help="allow replacing an existing output file")
    p.set_defaults(run=_run_build)


def _run_build(args) -> int:
    from ase.build import bulk
    from ase.data import chemical_symbols

    import dmdjax as dj

    if args.element not in chemical_symbols:
        raise ValueError(f"unknown element {args.element!r}")
    if not args.lattice_constant > 0:
        raise ValueError(f"--lattice-constant must be > 0; got {args.lattice_constant}")
    if min(args.repeat) < 1:
        raise ValueError(f"--repeat must be positive; got {args.repeat}")
    if not (np.isfinite(args.rattle) and args.rattle >= 0):
        raise ValueError(f"--rattle must be finite and >= 0 Å; got {args.rattle!r}")
    _check_output_file(args.output, args.overwrite)
    atoms = bulk(args.element, args.lattice, a=args.lattice_constant, cubic=True).repeat(tuple(args.repeat))
    rng = np.random.default_rng(args.seed)
    if args.solute:
        element, _, fraction = args.solute.partition(":")
        if element not in chemical_symbols:
            raise ValueError(f"unknown solute element {element!r} in --solute {args.solute!r}")
        try:
            fraction = float(fraction)
        except ValueError:
            raise ValueError(f"--solute must be ELEMENT:FRACTION; got {args.solute!r}") from None
        if not 0 <= fraction <= 1:
            raise ValueError(f"solute fraction must be in [0, 1]; got {fraction}")
        symbols = np.array(atoms.get_chemical_symbols(), dtype=object)
        chosen = rng.choice(len(atoms), size=int(round(fraction * len(atoms))), replace=False)
        symbols[chosen] = element
        atoms.set_chemical_symbols(symbols.tolist())
    if args.rattle:
        atoms.positions += rng.normal(0.0, args.rattle, atoms.positions.shape)
    dj.io.write_extxyz(args.output, dj.from_ase(atoms))
    print(f"wrote {args.output}: {len(atoms)} atoms ({args.lattice} {args.element}"
          f"{', ' + args.solute if args.solute else ''})")
    return 0


def _check_output_file(path: str, overwrite: bool) -> None:
    """Refuse an existing output file (unless ``overwrite``) or a folder, before any work."""
    from pathlib import Path

    from .io import check_writable

    target = Path(path)
    if target.is_dir():
        raise ValueError(f"output {path!r} is a folder, not a file")
    if target.exists() and not overwrite:
        raise FileExistsError(f"output file {path!r} exists: pass --overwrite to replace it")
    check_writable(target.parent)


def _add_study_options(p) -> None:
    """--overwrite, --no-progress and --float32, shared by the study commands."""
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--float32", action="store_true", help="single precision (default float64)")


def _add_chain(sub) -> None:
    p = sub.add_parser(
        "chain", help="the chain study: mean-field spin-diffusion vs DMD vs the sampler (figures, files)",
        description="Runs the chain study of dmdjax.studies.chain with its embedded defaults (or --quick), "
        "writes one trajectory per model, run.json, summary.json and figures (a)-(d) into --output, and prints "
        "a summary table. Parameters: dmdjax.studies.chain.ChainParameters.")
    p.add_argument("--output", default="chain-study", help="output folder (default ./chain-study)")
    p.add_argument("--quick", action="store_true", help="the reduced study (N = 16; sizes 16, 32; 64 replicas)")
    p.add_argument("--config", help="TOML file of parameters (keys of ChainParameters, optionally under [chain])")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override one parameter, e.g. --set kt=0.12 --set sizes=32,64 (repeatable)")
    p.add_argument("--sweep", metavar="NAME=VALUES",
                   help="instead of the study: K1 and K2 for every value of one parameter as one batched (vmapped, "
                   "device-sharded) call, e.g. --sweep beta=16,20,25 or --sweep kt=0.04:0.06:3; NAME one of "
                   "kt, beta, tau, mobility, contrast, epsilon_ab (writes sweep.npz, summary.json, fig_sweep.png)")
    _add_study_options(p)
    p.set_defaults(run=_run_chain)


def _run_chain(args) -> int:
    from .studies import chain

    parameters = chain.ChainParameters.quick() if args.quick else chain.ChainParameters()
    if args.config:
        parameters = chain.load_parameters(args.config, parameters)
    changes = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set needs NAME=VALUE; got {item!r}")
        changes[name.strip()] = value.strip()
    parameters = parameters.replace(**changes)  # validates
    if args.sweep:
        from .studies import chain_sweep

        name, values = chain_sweep.parse_sweep(args.sweep)
        chain_sweep.run_chain_sweep(parameters, name, values, args.output, overwrite=args.overwrite,
                                    progress=not args.no_progress)
        return 0
    chain.run_chain_study(parameters, args.output, overwrite=args.overwrite, progress=not args.no_progress)
    return 0


def _cells(text: str) -> tuple:
    try:
        cells = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"cells must be three integers NX,NY,NZ; got {text!r}") from None
    if len(cells) != 3:
        raise argparse.ArgumentTypeError(f"cells must be three integers NX,NY,NZ; got {text!r}")
    return cells


def _fractions(text: str) -> tuple:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers C1,C2,...; got {text!r}") from None


def _add_alloy_options(p, name: str, defaults) -> None:
    """Options both Al-Mg studies take (defaults from their parameter class), and how they run."""
    p.add_argument("--output", default=f"alloy-{name}", help=f"output folder (default ./alloy-{name})")
    p.add_argument("--quick", action="store_true", help="a small, short run (see the Parameters' quick())")
    p.add_argument("--concentration", type=float, default=None,
                   help=f"nominal Mg fraction (default {defaults.concentration:g})")
    p.add_argument("--temperature", type=float, default=None, help=f"K (default {defaults.temperature:g})")
    p.add_argument("--attempt-frequency", default=None, metavar="NU[/UNIT]",
                   help=f"nu of the exchange rates, per the run's time unit (default {defaults.attempt_frequency:g}); "
                   "with a unit, e.g. 1e13/s, every time the run reports is in that unit (s, ms, us, ns, ps, fs)")
    p.add_argument("--t-end", type=float, default=None,
                   help=f"end time in units of 1/Gamma0 (default {defaults.t_end:g})")
    p.add_argument("--outputs", type=int, default=None, help=f"number of output times (default {defaults.n_outputs})")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in --output")
    _add_study_options(p)
    p.set_defaults(run=_run_alloy, study_name=name)


def _add_alloy(sub) -> None:
    from .studies import dislocation, surface

    p = sub.add_parser("alloy", help="the Al-Mg DMD studies (EAM, master equation K3)",
                       description="Al-Mg segregation studies with the Mendelev (2009) EAM potential.")
    studies = p.add_subparsers(dest="study", metavar="STUDY")
    studies.required = True
    s = studies.add_parser(
        "surface", help="Mg segregation to a free (100) surface: layer profiles, Langmuir-McLean check, frames",
        description="DMD of Mg segregation to the (100) surfaces of an Al-Mg slab (dmdjax.studies.surface): "
        "molecular-statics segregation energy, the Langmuir-McLean check at dilute compositions, the K3 run "
        "(checkpointed: --resume continues it), extended-XYZ frames, profiles, figure, summary.json. "
        "Defaults: Al-6% Mg, 600 K, nu = 10, Q = 0.77 eV, a = 4.108 A, 10x5x5 cells (CPU size); the published "
        "example is --cells 20,8,8.")
    s.add_argument("--cells", type=_cells, default=None, metavar="NX,NY,NZ",
                   help="slab size in cubic cells, x free (default 10,5,5; NY, NZ >= 5)")
    s.add_argument("--isotherm", type=_fractions, default=None, metavar="C1,C2,...",
                   help="nominal Mg fractions of the Langmuir-McLean check (default 0.001,0.002,0.005,0.01,0.02)")
    s.add_argument("--no-species-widths", dest="species_widths", action="store_false", default=None,
                   help="skip the segregation free energy with per-species Gaussian widths (reported beside the "
                   "one-width-per-site value; several relaxations' cost: skip it beyond ~10^4 atoms)")
    _add_alloy_options(s, "surface", surface.SurfaceParameters())
    d = studies.add_parser(
        "dislocation", help="Mg around an edge dislocation (Cottrell atmosphere): maps, pressure, frames",
        description="DMD of Mg redistribution around a straight a/2[-110](111) edge dislocation in Al-Mg "
        "(dmdjax.studies.dislocation): matscipy builds the cylinder with the potential's elastic constants, "
        "its outer shell is clamped, (X, k) relax, then the K3 run (checkpointed: --resume continues it); "
        "maps of c around the core with the elastic pressure beside them, extended-XYZ frames, figure, "
        "summary.json. Defaults: Al-5% Mg, 600 K, nu = 10, Q = 0.77 eV, a = 4.108 A, R = 20 A with an 8 A "
        "clamped shell, 4 periods along the line (1452 atoms, CPU size); e.g. --radius 150 --length 20 on a GPU.")
    d.add_argument("--radius", type=float, default=None, help="cylinder radius, A (default 20)")
    d.add_argument("--length", type=int, default=None, help="periods of 5.03 A along the line (default 4)")
    _add_alloy_options(d, "dislocation", dislocation.DislocationParameters())
    _add_alloy_sampler(studies)


def _add_alloy_sampler(studies) -> None:
    from .studies.surface_sampler import SamplerStudyParameters

    defaults = SamplerStudyParameters()
    m = studies.add_parser(
        "sampler", help="beyond the mean field: the spin-diffusion sampler on the surface slab against DMD",
        description="The spin-diffusion model (Kawasaki exchange with detailed-balance rates, joint overdamped "
        "Langevin positions, EAM swap energies computed locally, vmapped replicas) on the surface study's slab "
        "(dmdjax.studies.surface_sampler): equilibrium layer profiles at several Mg fractions with replica "
        "standard errors and drift checks, against DMD's constrained minimum and Langmuir-McLean with the "
        "relaxed statics E_seg; the surface-layer kinetics against DMD's K2 and K3 on the t/tau = Gamma0 t axis. "
        "Writes table.csv, equilibrium.npz, kinetics.npz, fig_sampler.png, summary.json. Defaults: 10x5x5 "
        "cells (1000 atoms), 0.5/2/6 % Mg, 600 K, 8 replicas (CPU size); e.g. --cells 20,8,8 --replicas 64 on a GPU.")
    m.add_argument("--output", default="alloy-sampler", help="output folder (default ./alloy-sampler)")
    m.add_argument("--quick", action="store_true", help="a small, short run (4x5x5 cells, 2 compositions, 4 replicas)")
    m.add_argument("--cells", type=_cells, default=None, metavar="NX,NY,NZ",
                   help=f"slab size in cubic cells, x free (default {','.join(map(str, defaults.cells))})")
    m.add_argument("--concentrations", type=_fractions, default=None, metavar="C1,C2,...",
                   help="nominal Mg fractions of the equilibrium profiles (default 0.005,0.02,0.06)")
    m.add_argument("--temperature", type=float, default=None, help=f"K (default {defaults.temperature:g})")
    m.add_argument("--replicas", type=int, default=None, help=f"independent replicas, even (default {defaults.replicas})")
    m.add_argument("--t-equilibrate", type=float, default=None,
                   help=f"tau discarded before averaging (default {defaults.t_equilibrate:g})")
    m.add_argument("--t-average", type=float, default=None,
                   help=f"tau averaged over (default {defaults.t_average:g})")
    m.add_argument("--kinetics-concentration", type=float, default=None,
                   help=f"nominal Mg fraction of the kinetic comparison (default {defaults.kinetics_concentration:g})")
    m.add_argument("--t-end", type=float, default=None, help=f"end of the kinetic comparison, tau (default {defaults.t_end:g})")
    m.add_argument("--seed", type=int, default=None, help="PRNG seed (default 0)")
    _add_study_options(m)
    m.set_defaults(run=_run_alloy_sampler)


def _run_alloy_sampler(args) -> int:
    import dataclasses

    from .studies import surface_sampler

    parameters = (surface_sampler.SamplerStudyParameters.quick() if args.quick
                  else surface_sampler.SamplerStudyParameters())
    names = ("cells", "concentrations", "temperature", "replicas", "t_equilibrate", "t_average",
             "kinetics_concentration", "t_end", "seed")
    changes = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    parameters = dataclasses.replace(parameters, **changes)  # validates
    surface_sampler.run_sampler_study(parameters, args.output, overwrite=args.overwrite, progress=not args.no_progress)
    return 0


def _run_alloy(args) -> int:
    import dataclasses

    from .studies import dislocation, surface
    from .studies.alloy import parse_frequency

    parameters_class, run, own = {
        "surface": (surface.SurfaceParameters, surface.run_surface_study, ("cells", "isotherm", "species_widths")),
        "dislocation": (dislocation.DislocationParameters, dislocation.run_dislocation_study, ("radius", "length")),
    }[args.study_name]
    parameters = parameters_class.quick() if args.quick else parameters_class()
    names = {"concentration": "concentration", "temperature": "temperature", "t_end": "t_end",
             "outputs": "n_outputs", **{name: name for name in own}}
    changes = {field: getattr(args, option) for option, field in names.items() if getattr(args, option) is not None}
    if args.attempt_frequency is not None:
        changes["attempt_frequency"], changes["time_unit"] = parse_frequency(args.attempt_frequency)
    parameters = dataclasses.replace(parameters, **changes)  # validates
    run(parameters, args.output, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    return 0


def _add_sbsam(sub) -> None:
    from .sbsam.train import LOSSES
    from .studies.sbsam import ARCHITECTURES

    p = sub.add_parser(
        "sbsam", help="SB-SAM on the harmonic-lattice oracle: train every loss, sample the inner region, stress",
        description="Runs dmdjax.studies.sbsam.run_harmonic_study (defaults: SBSAMParameters, about 8 minutes on a "
        "CPU; --quick about a minute): trains the score network with each loss on exact samples at random (F, T), "
        "then on held-out (F, T) reports the score error, the covariance and the inner stress of Langevin samples "
        "of the inner region alone, against the exact marginal and the clamped-outer baseline. Writes "
        "models/*.msgpack, results.json, table.csv, fig_stress.png, fig_score_error.png, run.json, summary.json.")
    p.add_argument("--output", help="output folder (default ./sbsam-study, with --crystal ./sbsam-crystal)")
    p.add_argument("--crystal", action="store_true",
                   help="the nonlinear Morse crystal instead (dmdjax.studies.sbsam_crystal: 1152 atoms sampled in "
                   "full by BAOAB, 97 inner atoms sampled alone; ~20 min on a CPU): inner stress from SB-SAM, the "
                   "smeared mean-field score, the full system and clamped outer atoms on held-out (F, T); writes "
                   "model.msgpack, results.json, table.csv, fig_crystal_stress.png, summary.json")
    p.add_argument("--eam", action="store_true",
                   help="3-D bcc Fe (Mendelev 2003 EAM) around a vacancy and in the perfect crystal "
                   "(dmdjax.studies.sbsam_eam: 431 atoms sampled in full by BAOAB, the 168 atoms the core's local "
                   "stress needs sampled alone; ~30 min on a CPU): core PK stress from SB-SAM, the reference score, "
                   "the full system and clamped outer atoms on held-out (F, T); writes model-*.msgpack, results.json, "
                   "table.csv, fig_eam_stress.png, summary.json")
    p.add_argument("--upstream", action="store_true",
                   help="with --eam: the upstream reference's size (12^3 cells, 3456 sites; for a GPU)")
    p.add_argument("--quick", action="store_true", help="the reduced study (16 conditions x 1000 samples, 800 steps; "
                   "with --crystal 168 atoms, 8 conditions; with --eam 249 atoms, 58 inner, ~2.5 min)")
    p.add_argument("--losses", type=lambda text: tuple(t.strip() for t in text.split(",") if t.strip()),
                   help=f"comma-separated subset of {','.join(LOSSES)} (default all)")
    p.add_argument("--architecture", choices=ARCHITECTURES, help="score network (default mlp)")
    p.add_argument("--steps", type=int, help="training steps per loss")
    p.add_argument("--conditions", type=int, help="training conditions (F, T)")
    p.add_argument("--samples", type=int, help="training samples per condition")
    p.add_argument("--seed", type=int, help="PRNG seed (default 0)")
    _add_study_options(p)
    p.set_defaults(run=_run_sbsam)


def _run_sbsam(args) -> int:
    import dataclasses

    from .studies import sbsam

    if args.crystal and args.eam:
        raise ValueError("--crystal and --eam are different studies; give one")
    if args.upstream and not args.eam:
        raise ValueError("--upstream applies to --eam only")
    if args.crystal:
        return _run_sbsam_crystal(args)
    if args.eam:
        return _run_sbsam_eam(args)
    args.output = args.output or "sbsam-study"
    parameters = sbsam.SBSAMParameters.quick() if args.quick else sbsam.SBSAMParameters()
    names = {"losses": "losses", "architecture": "architecture", "steps": "steps", "conditions": "n_conditions",
             "samples": "samples", "seed": "seed"}
    changes = {field: getattr(args, option) for option, field in names.items() if getattr(args, option) is not None}
    parameters = dataclasses.replace(parameters, **changes)  # validates
    summary = sbsam.run_harmonic_study(parameters, args.output, overwrite=args.overwrite,
                                       progress=not args.no_progress)
    print(f"{'loss':<12}{'score err':>11}{'cov err':>10}{'stress err':>12}{'train s':>9}")
    for name, row in summary["losses"].items():
        print(f"{name:<12}{row['score_error_mean']:>11.4f}{row['covariance_error_max']:>10.4f}"
              f"{row['stress_error_max']:>12.4f}{row['train_seconds']:>9.1f}")
    print(f"{'clamped':<12}{'':>11}{'':>10}{summary['clamped_stress_error_max']:>12.4f}")
    print(f"best loss {summary['best_loss']}; targets met: {summary['meets_targets']}; "
          f"wall {summary['wall_seconds']:.0f} s; files in {args.output}")
    return 0


def _run_sbsam_eam(args) -> int:
    import dataclasses

    from .studies import sbsam_eam

    ignored = [option for option in ("losses", "architecture", "conditions", "samples")
               if getattr(args, option) is not None]
    if ignored:
        raise ValueError(f"--eam trains the cubic correction by force + sliced score matching; "
                         f"--{', --'.join(ignored)} do not apply")
    if args.quick and args.upstream:
        raise ValueError("--quick and --upstream are different sizes; give one")
    args.output = args.output or "sbsam-eam"
    kind = "quick" if args.quick else "upstream" if args.upstream else None
    parameters = getattr(sbsam_eam.EAMParameters, kind)() if kind else sbsam_eam.EAMParameters()
    changes = {field: getattr(args, field) for field in ("steps", "seed") if getattr(args, field) is not None}
    parameters = dataclasses.replace(parameters, **changes)
    summary = sbsam_eam.run_eam_study(parameters, args.output, overwrite=args.overwrite,
                                      progress=not args.no_progress)
    with open(f"{args.output}/results.json") as handle:
        rows = json.load(handle)["conditions"]
    print(f"{'defect':<9}{'T (K)':>7}{'|P_full|':>11}{'rel s.e.':>10}{'SB-SAM err':>12}{'reference err':>15}"
          f"{'clamped err':>13}")
    for r in rows:
        print(f"{r['defect']:<9}{r['temperature']:>7.0f}{np.linalg.norm(r['full']):>11.5f}"
              f"{r['full_relative_se']:>10.4f}{r['sbsam_error']:>12.4f}{r['reference_error']:>15.4f}"
              f"{r['clamped_error']:>13.4f}")
    times = summary["seconds_to_common_error"]
    print(f"SB-SAM within {summary['stress_error_max']:.4f} of the full system (target 0.02), "
          f"{summary['closer_factor_min']:.1f}x closer than clamped (target 5), cost ratio "
          f"{summary['cost_ratio']:.1f} (target 10); targets met: {summary['meets_targets']}")
    print(f"seconds per condition to a 0.2 % standard error: full system {times['full']:.1f}, SB-SAM "
          f"{times['sbsam_with_setup']:.1f} (with its relaxation and Hessian); wall {summary['wall_seconds']:.0f} s; "
          f"files in {args.output}")
    return 0


def _run_sbsam_crystal(args) -> int:
    import dataclasses

    from .studies import sbsam_crystal

    ignored = [option for option in ("losses", "architecture", "conditions", "samples")
               if getattr(args, option) is not None]
    if ignored:
        raise ValueError(f"--crystal trains the boundary correction by force matching on its grid; "
                         f"--{', --'.join(ignored)} do not apply")
    args.output = args.output or "sbsam-crystal"
    parameters = sbsam_crystal.CrystalParameters.quick() if args.quick else sbsam_crystal.CrystalParameters()
    changes = {field: getattr(args, field) for field in ("steps", "seed") if getattr(args, field) is not None}
    parameters = dataclasses.replace(parameters, **changes)
    summary = sbsam_crystal.run_crystal_study(parameters, args.output, overwrite=args.overwrite,
                                              progress=not args.no_progress)
    with open(f"{args.output}/results.json") as handle:
        rows = json.load(handle)
    print(f"{'eps_xx':>7}{'eps_yy':>8}{'T (K)':>7}{'full P_xx':>11}{'± s.e.':>9}{'SB-SAM err':>12}"
          f"{'mean-field err':>16}{'clamped err':>13}")
    for r in rows["conditions"]:
        print(f"{r['eps_xx']:>7.4f}{r['eps_yy']:>8.4f}{r['temperature']:>7.0f}{r['full'][0]:>11.5f}"
              f"{r['full_se'][0]:>9.1e}{r['sbsam_error']:>12.4f}{r['mean_field_error']:>16.4f}"
              f"{r['clamped_error']:>13.4f}")
    times = summary["seconds_to_common_error"]
    print(f"SB-SAM within {summary['stress_error_max']:.4f} of the full system (target 0.02), "
          f"{summary['closer_factor_min']:.1f}x closer than clamped (target 5); targets met: "
          f"{summary['meets_targets']}")
    print(f"seconds per condition to a {100 * times['relative_standard_error']:g} % standard error: full system "
          f"{times['full']:.1f} (every translate) / {times['full_inner']:.1f} (region's bonds), SB-SAM "
          f"{times['sbsam']:.1f}, mean field {times['mean_field']:.1f}, clamped {times['clamped']:.1f}; "
          f"wall {summary['wall_seconds']:.0f} s; files in {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmdjax",
        description="dmdjax: differentiable diffusive molecular dynamics in JAX (metal units: eV, Å, K).",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"dmdjax {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="only warnings and errors (no progress lines); results still go to the output files")
    parser.add_argument("--verbose", "-v", action="store_true", help="also debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_build(sub)
    _add_energy(sub)
    _add_chain(sub)
    _add_alloy(sub)
    _add_sbsam(sub)
    return parser


def cpu_compile_flags() -> None:
    """Turn off XLA:CPU's fusion emitters for this process, before JAX's backend starts.

    With jaxlib 0.9-0.10 they make the many small graphs of a DMD run compile slowly: off,
    the ``--quick`` chain study took 30 s instead of 47 s on 2 cores (jaxlib 0.10.1), its
    runs included. Applied only to those versions (an unknown flag would abort XLA) and
    never over a setting of the flag already in ``XLA_FLAGS``; no effect once the backend
    has started (e.g. when ``main`` is called from a running Python session).
    """
    import os

    from jaxlib import version

    flags = os.environ.get("XLA_FLAGS", "")
    release = tuple(int(part) for part in version.__version__.split(".")[:2])
    if "xla_cpu_use_fusion_emitters" not in flags and (0, 9) <= release <= (0, 10):
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_use_fusion_emitters=false".strip()


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    anywhere = {"--debug": "debug", "--quiet": "quiet", "-q": "quiet", "--verbose": "verbose", "-v": "verbose"}
    flags = {name: any(a in argv for a, n in anywhere.items() if n == name) for name in set(anywhere.values())}
    args = parser.parse_args([a for a in argv if a not in anywhere])  # these are accepted anywhere on the line
    vars(args).update(flags)
    configure_logging(args)
    cpu_compile_flags()
    import jax

    if not getattr(args, "float32", False):
        jax.config.update("jax_enable_x64", True)  # the application (not the library) chooses precision
    try:
        return args.run(args)
    except Exception as err:  # one line for the user; the traceback with --debug
        if args.debug:
            raise
        code, message = _describe(err)
        print(f"dmdjax: error: {message}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("dmdjax: error: interrupted (files already written are complete; a study resumes with --resume)",
              file=sys.stderr)
        return 130


def configure_logging(args) -> None:
    """The library's messages (logger ``"dmdjax"``) as plain lines on standard output: INFO, or
    WARNING with ``--quiet``, DEBUG with ``--verbose``. Progress bars appear only on a terminal
    (:mod:`dmdjax.progress`); redirected, the output holds no carriage returns."""
    import logging

    from .progress import logger

    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logger.setLevel(level)
    for handler in [h for h in logger.handlers if getattr(h, "_dmdjax_cli", False)]:
        logger.removeHandler(handler)  # an earlier main() in this process: its stream may be gone
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._dmdjax_cli = True
    logger.addHandler(handler)  # propagation stays on: a caller's own root handlers still see the messages
    if args.quiet:
        args.no_progress = True


#: Exit status of a run that did not converge (a DMD run that stopped, a relaxation).
NOT_CONVERGED = 3


def _describe(err: Exception) -> tuple[int, str]:
    """(exit status, one-line message) of an error: 3 for non-convergence, 2 otherwise."""
    from .dmd import DMDError
    from .relax import RelaxationError

    message = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (DMDError, RelaxationError)):
        return NOT_CONVERGED, message.split(" Above is the stack outside of JIT")[0]
    if isinstance(err, OSError) and err.filename is not None and not isinstance(err, FileNotFoundError):
        return 2, f"cannot write or read {str(err.filename)!r}: {err.strerror or message}"
    if isinstance(err, (ValueError, FileNotFoundError, FileExistsError, NotImplementedError, OSError)):
        return 2, message
    return 2, f"{type(err).__name__}: {message} (run with --debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
