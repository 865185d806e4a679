"""The cost of the 3-D SB-SAM against the full system at a larger crystal, side by side in one run (issue 27).

The study (``dmdjax sbsam --eam``) trains and compares at 6³ cells (431 sites), where the full system
is only 2.6 × the atoms the inner sampler touches (168 inner + 263 outer in reach), so its cost ratio
says little about the setting SB-SAM is for. This script takes a finished study folder and, at its
held-out conditions, measures at ``--repeats`` cells (default 12: the upstream reference's 3 456 sites):

* **SB-SAM** exactly as the study runs it: its per-condition set-up at the study's size (relaxation,
  Hessian and Schur complement W of the small periodic cell at the same F: :func:`dmdjax.sbsam.bcc.reference`,
  timed and counted), the trained correction (the study's checkpoint), the inner region sampled alone,
  the core stress with its zero-variance controls. Its work does not depend on the surroundings' size:
  the inner region is the same 168 sites at every size, and the sampler touches them and the outer
  atoms in their reach only;
* **the full system** at ``--repeats`` cells: jax-md BAOAB of every atom (:func:`dmdjax.sbsam.bcc.sample_full`),
  the core stress with the study's best controls, designed on a whole-crystal Hessian (the perfect
  lattice's by translation symmetry, exact columns within reach of the inner region; its set-up is
  *not* counted, in the full system's favour).

Each method's wall time to a 0.2 % relative standard error of P is t × (s.e./‖P‖/0.002)², t its
sampling time (compilation excluded), SB-SAM's with its set-up added; ``cost_ratio`` = full / SB-SAM.
Both stresses are reported, with the size effect: the full system at the study's size vs the larger one.

    dmdjax sbsam --eam --output runs/eam        # the study (≈ 25 min on 2 CPU cores)
    python scripts/sbsam_eam_cost.py runs/eam --json docs/data/sbsam_eam_cost.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dmdjax.potentials import load_eam
from dmdjax.sbsam import bcc, model as models, sample, train
from dmdjax.studies.sbsam_eam import (EAMParameters, MeanTilt, clamped_step, control_design, core_stress_and_score,
                                     core_stress_derivatives, full_core_stress, inner_core_stress,
                                     symmetric_deformation, thermal_score, volumetric_strain)

TARGET = 0.002


def seconds_to_target(seconds, se, scale):
    return float(seconds * (np.linalg.norm(se) / scale / TARGET) ** 2)


def full_control_data(crystal: bcc.BccCrystal, deformation, *, tolerance: float = 1e-6, iterations: int = 60):
    """u⁰ (n, 3) Å and a Hessian (3n, 3n) eV/Å² there for the full system's controls, without 3n
    directional derivatives: the perfect lattice's (:meth:`~dmdjax.sbsam.bcc.BccCrystal.lattice_hessian`);
    with a vacancy, its rows removed, u⁰ relaxed by Newton steps with it held fixed, and the exact columns
    (and rows) of the atoms within reach of the inner region put in (its coordinates and those coupled
    to them are exact; far off the relaxation's change of the blocks is left out: the controls stay
    mean-zero, a design choice only)."""
    perfect = dataclasses.replace(crystal, vacancy=False)
    hessian = perfect.lattice_hessian(deformation)
    n = crystal.n_atoms
    centre = jnp.zeros((n, 3), hessian.dtype)
    if not crystal.vacancy:
        return centre, hessian
    kept = np.flatnonzero(perfect.centre_distance > 1e-6)  # the vacancy crystal's atoms, in its order
    coordinates = (3 * kept[:, None] + np.arange(3)).reshape(-1)
    hessian = hessian[np.ix_(coordinates, coordinates)]
    if not np.allclose(perfect.sites[kept], crystal.sites):
        raise ValueError("the vacancy crystal's sites are not the perfect crystal's less the centre, in order")
    centre, max_force = crystal.relax(deformation, hessian, iterations)
    if not max_force <= tolerance:
        raise RuntimeError(f"the vacancy's relaxation left a force of {max_force:.3g} eV/Å after {iterations} "
                           "Newton steps with the lattice Hessian")
    pairs, _ = crystal.pairs
    near = np.union1d(crystal.inner, pairs[np.isin(pairs, crystal.inner).any(axis=1)].reshape(-1))
    columns = (3 * near[:, None] + np.arange(3)).reshape(-1)

    def gradient(v):
        return -crystal.forces(v.reshape(n, 3), deformation).reshape(-1)

    flat = centre.reshape(-1)
    exact = jax.jit(lambda basis: jax.lax.map(lambda t: jax.jvp(gradient, (flat,), (t,))[1], basis, batch_size=96))(
        jnp.eye(3 * n, dtype=flat.dtype)[columns])
    hessian = hessian.at[:, columns].set(exact.T).at[columns, :].set(exact)
    return centre, hessian


def measure(parameters, potential, defect, index, study, repeats, replicas, n_steps, key):
    """One held-out condition: SB-SAM as in the study and the full system at ``repeats`` cells."""
    row = np.asarray(parameters.test_conditions[index], float)
    temperature = jnp.asarray(row[6])
    expansion = study["summary"]["expansion"]
    deformation = jnp.asarray(symmetric_deformation(row[:6]))
    total = deformation * float(np.interp(row[6], expansion["temperatures"], expansion["scale"]))
    crystal = bcc.BccCrystal(potential, repeats=parameters.repeats, vacancy=defect == "vacancy",
                             inner_radius=parameters.inner_radius)
    large = dataclasses.replace(crystal, repeats=repeats)
    if large.n_inner != crystal.n_inner:
        raise ValueError(f"the inner regions differ at {parameters.repeats} and {repeats} cells")
    m = crystal.n_inner

    # --- SB-SAM, exactly as the study runs it (its set-up timed) -----------------------------------
    start = time.perf_counter()
    data = bcc.reference(crystal, total)._replace(relaxed_all=None, hessian=None)
    setup_seconds = time.perf_counter() - start
    network, params, metadata = train.load_checkpoint(study["folder"] / f"model-{defect}.msgpack")
    if network.atoms != m:
        raise ValueError(f"the checkpoint's model has {network.atoms} atoms, the inner region {m}")
    coefficients = network.apply(params, deformation, temperature)
    tilt = metadata.get("mean_tilt")  # studies before the mean tilt have none
    bias = None if tilt is None else (MeanTilt.from_json(tilt)(row[6], volumetric_strain(deformation))
                                      * models.thermal_length(temperature, 1.0))

    def score(x):
        return thermal_score(crystal, "sbsam", x, total, temperature, data, coefficients, bound=network.bound,
                             bias=bias)

    length = models.thermal_length(temperature, 1.0)
    step = clamped_step(crystal, total, temperature, data, parameters.step_fraction)
    design = tuple(np.asarray(a) for a in jax.jit(functools.partial(control_design, crystal))(total, temperature, data))
    start_x = (data.relaxed - jnp.mean(data.relaxed, axis=0)) / length
    sampler_key, full_key = jax.random.split(key)
    result = sample.langevin(score, sampler_key, jnp.repeat(start_x[None], parameters.chains, 0), step=step,
                             n_steps=parameters.sampler_steps, burn_in=parameters.sampler_burn_in,
                             thin=parameters.sampler_thin, max_displacement=100.0)
    x = jnp.asarray(np.asarray(result.samples).reshape(-1, m, 3))
    values, scores = jax.jit(lambda y: core_stress_and_score(crystal, score, y, total, temperature))(x)
    sbsam, sbsam_se = inner_core_stress(values, scores, x, temperature, design, parameters.chains)

    # --- the full system at the larger size ----------------------------------------------------------
    start = time.perf_counter()
    centre, hessian = full_control_data(large, total)
    derivatives = jax.jit(functools.partial(core_stress_derivatives, large))(
        centre[large.inner].reshape(-1), total, temperature)
    design_seconds = time.perf_counter() - start
    full = bcc.sample_full(large, full_key, total[None], temperature[None], replicas=replicas, n_steps=n_steps,
                           thin=parameters.thin, burn_in=parameters.burn_in, time_step=parameters.time_step,
                           friction=parameters.friction, progress=True)
    full_mean, full_se = full_core_stress(large, derivatives, centre, hessian, row[6], full.core_stress[0],
                                          full.force[0], full.displacement[0], replicas)
    scale = float(np.linalg.norm(full_mean))
    study_row = [r for r in study["results"]["conditions"] if r["defect"] == defect][index]
    joint = np.hypot(np.linalg.norm(sbsam_se), np.linalg.norm(full_se))
    report = {
        "defect": defect, "condition": row.tolist(), "repeats": repeats, "atoms": large.n_atoms, "inner_atoms": m,
        "study_atoms": crystal.n_atoms,
        "full": full_mean.tolist(), "full_se": full_se.tolist(), "full_relative_se": float(np.linalg.norm(full_se)) / scale,
        "full_replicas": replicas, "full_steps": n_steps, "full_seconds": full.seconds,
        "full_control_design_seconds": design_seconds, "tau_core_stress": full.checks["tau_core_stress"][0],
        "sbsam": sbsam.tolist(), "sbsam_se": sbsam_se.tolist(),
        "sbsam_relative_se": float(np.linalg.norm(sbsam_se)) / scale, "sbsam_seconds": result.seconds,
        "setup_seconds": setup_seconds, "sbsam_error": float(np.linalg.norm(sbsam - full_mean)) / scale,
        "sbsam_error_sigma": float(np.linalg.norm(sbsam - full_mean) / joint),
        "study_full": study_row["full"], "study_full_se": study_row["full_se"],
        "size_effect": float(np.linalg.norm(np.asarray(study_row["full"]) - full_mean)) / scale,
        "size_effect_sigma": float(np.linalg.norm(np.asarray(study_row["full"]) - full_mean)
                                   / np.hypot(np.linalg.norm(study_row["full_se"]), np.linalg.norm(full_se))),
        "step_ms_per_chain": {"full": 1e3 * full.seconds / (replicas * (n_steps + parameters.burn_in)),
                              "sbsam": 1e3 * result.seconds / (parameters.chains * (parameters.sampler_steps
                                                                                   + parameters.sampler_burn_in))}}
    report["seconds_to_target"] = {"full": seconds_to_target(full.seconds, full_se, scale),
                                   "sbsam": seconds_to_target(result.seconds, sbsam_se, scale)}
    report["seconds_to_target"]["sbsam_with_setup"] = report["seconds_to_target"]["sbsam"] + setup_seconds
    report["cost_ratio"] = report["seconds_to_target"]["full"] / report["seconds_to_target"]["sbsam_with_setup"]
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a finished `dmdjax sbsam --eam` output folder")
    parser.add_argument("--repeats", type=int, default=12, help="cells per side of the larger crystal (12: 3456 sites)")
    parser.add_argument("--defects", nargs="+", choices=("vacancy", "perfect"), default=None,
                        help="default: the study's")
    parser.add_argument("--conditions", type=int, nargs="+", default=None,
                        help="indices of the study's held-out conditions (default: all)")
    parser.add_argument("--replicas", type=int, default=8, help="full-system replicas per condition")
    parser.add_argument("--steps", type=int, default=1500, help="full-system BAOAB steps after the burn-in")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)

    run = json.loads((args.study / "run.json").read_text())
    if run.get("study") != "sbsam-eam":
        raise SystemExit(f"{args.study} is not a `dmdjax sbsam --eam` output folder (run.json study: "
                         f"{run.get('study')!r})")
    parameters = EAMParameters.from_json(run["parameters"])
    study = {"folder": args.study, "summary": json.loads((args.study / "summary.json").read_text()),
             "results": json.loads((args.study / "results.json").read_text())}
    if args.steps % parameters.thin:
        raise SystemExit(f"--steps ({args.steps}) must be a multiple of the study's thin ({parameters.thin})")
    defects = args.defects or list(parameters.defects)
    indices = args.conditions if args.conditions is not None else list(range(len(parameters.test_conditions)))
    potential = load_eam(parameters.potential)
    reports = []
    for d, defect in enumerate(defects):
        for index in indices:
            report = measure(parameters, potential, defect, index, study, args.repeats, args.replicas, args.steps,
                             jax.random.PRNGKey(1000 + 10 * d + index))
            reports.append(report)
            print(f"{defect} at {report['condition']} ({report['atoms']} atoms): full ‖P‖ "
                  f"{np.linalg.norm(report['full']):.4g} eV/Å³ ± {report['full_relative_se']:.2%}; SB-SAM error "
                  f"{report['sbsam_error']:.2%} ({report['sbsam_error_sigma']:.1f} σ); size effect "
                  f"{report['size_effect']:.2%}; step {report['step_ms_per_chain']['full']:.2f} ms (full) vs "
                  f"{report['step_ms_per_chain']['sbsam']:.2f} ms (SB-SAM) per chain; to 0.2 %: full "
                  f"{report['seconds_to_target']['full']:.0f} s, SB-SAM {report['seconds_to_target']['sbsam']:.0f} s "
                  f"+ {report['setup_seconds']:.0f} s set-up: ratio {report['cost_ratio']:.1f}", flush=True)
    output = {"study": str(args.study), "repeats": args.repeats, "conditions": reports,
              "cost_ratio_min": min(r["cost_ratio"] for r in reports), "target_relative_se": TARGET,
              "device": jax.default_backend(), "jax": jax.__version__}
    print(f"cost ratio (full / SB-SAM with set-up), smallest over conditions: {output['cost_ratio_min']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(output, indent=1))


if __name__ == "__main__":
    main()
