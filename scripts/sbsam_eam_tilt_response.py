"""Where SB-SAM's hydrostatic stress comes from, per held-out condition of a `dmdjax sbsam --eam` run.

The model is S = P[S_ref + b(T, J) + C(x − x⁰)] (``dmdjax.studies.sbsam_eam``). The study samples SB-SAM
and the reference alone at each held-out condition; this script splits their difference in the core's
mean pressure p = tr P/3 into

* the mean tilt's part, in linear response: ΔP = ∇P · A⁻¹ b (A the reference precision at u⁰, ∇P the
  core stress's gradient there, b the checkpoint's tilt at the condition's T and J = det F − 1);
* the learned correction's part: the rest, p_SB-SAM − p_reference − Δp (with the two samplers' noise);

and reports what the reference plus the tilt alone would give (P_reference + ΔP) against the full
system. No sampling: it reads the study's ``results.json``, ``summary.json`` and checkpoints, and
relaxes the crystal at each held-out condition (≈ 20 s each on a 2-core CPU).

    python scripts/sbsam_eam_tilt_response.py <study folder> --json docs/data/sbsam_eam_tilt_response.json
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dmdjax.potentials import load_eam
from dmdjax.sbsam import bcc, train
from dmdjax.studies.sbsam_eam import (EAMParameters, MeanTilt, control_design, symmetric_deformation,
                                     tilt_stress_response, volumetric_strain)


def pressure(stress) -> float:
    """tr P/3 of a flattened 3 × 3 stress, eV/Å³."""
    return float(np.trace(np.asarray(stress).reshape(3, 3)) / 3.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a finished `dmdjax sbsam --eam` output folder")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)

    summary = json.loads((args.study / "summary.json").read_text())
    rows = json.loads((args.study / "results.json").read_text())["conditions"]
    parameters = EAMParameters.from_json(json.loads((args.study / "run.json").read_text())["parameters"])
    grid, scale = summary["expansion"]["temperatures"], summary["expansion"]["scale"]
    potential = load_eam(parameters.potential)
    output = []
    for row in rows:
        crystal = bcc.BccCrystal(potential, repeats=parameters.repeats, vacancy=row["defect"] == "vacancy",
                                 inner_radius=parameters.inner_radius)
        deformation = symmetric_deformation(np.asarray(row["strain"])[None])[0]
        temperature = row["temperature"]
        total = jnp.asarray(deformation * np.interp(temperature, grid, scale))
        data = bcc.reference(crystal, total)._replace(relaxed_all=None, hessian=None)
        design = jax.jit(functools.partial(control_design, crystal))(total, jnp.asarray(temperature), data)
        _, _, metadata = train.load_checkpoint(args.study / f"model-{row['defect']}.msgpack")
        tilt = MeanTilt.from_json(metadata["mean_tilt"])(temperature, volumetric_strain(deformation))
        response = tilt_stress_response(design, tilt)
        full = np.asarray(row["full"])
        with_tilt = np.asarray(row["reference"]) + response
        parts = {
            "defect": row["defect"], "temperature": temperature, "volumetric": float(volumetric_strain(deformation)),
            **{f"pressure_{name}": pressure(row[name]) for name in ("full", "reference", "sbsam", "clamped")},
            "pressure_tilt_response": pressure(response),
            "pressure_correction": pressure(row["sbsam"]) - pressure(row["reference"]) - pressure(response),
            "pressure_correction_se": float(np.sqrt(np.mean(np.asarray(row["sbsam_sampling_se"])[[0, 4, 8]]) ** 2
                                                    + np.mean(np.asarray(row["reference_se"])[[0, 4, 8]]) ** 2)),
            "sbsam_error": row["sbsam_error"],
            "reference_and_tilt_error": float(np.linalg.norm(with_tilt - full) / np.linalg.norm(full)),
        }
        output.append(parts)
        print(f"{row['defect']:8s} {temperature:4.0f} K  J {parts['volumetric']:+.4f}  p (1e-4 eV/Å³): full "
              f"{parts['pressure_full'] * 1e4:8.2f}, reference {parts['pressure_reference'] * 1e4:8.2f}, tilt "
              f"{parts['pressure_tilt_response'] * 1e4:+6.2f}, correction {parts['pressure_correction'] * 1e4:+6.2f} "
              f"± {parts['pressure_correction_se'] * 1e4:.2f}; error SB-SAM {parts['sbsam_error']:.2%}, "
              f"reference + tilt {parts['reference_and_tilt_error']:.2%}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"study": str(args.study), "conditions": output}, indent=1))


if __name__ == "__main__":
    main()
