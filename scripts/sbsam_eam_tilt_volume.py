"""Does the perfect crystal's mean tilt depend on the volume? (issue 27)

The 3-D SB-SAM study's mean tilt b (``dmdjax.studies.sbsam_eam.pin_perfect_mean``) puts the perfect
region's sampled mean on its exact value. Fitted on the unstrained crystal as a line in T, it left the
held-out conditions — strained in volume by J = det F − 1 = +1 % (250 K) and −0.3 % (500 K) — with
hydrostatic errors of opposite signs. This script pins b on the hydrostatically strained perfect
crystal, F = (1 + J)^⅓ a(T)/a₀ · I, at (T, J) points (the study's pinning settings: 16 chains × 2 500
steps after 8 × 1 250) and prints, per point, the pressure the tilt moves the core by, in linear
response ∇P · A⁻¹ b (A the reference precision, ∇P the core stress's gradient at u⁰), with the noise
of the last pinning run's chain-to-chain offsets.

    python scripts/sbsam_eam_tilt_volume.py --json docs/data/sbsam_eam_tilt_volume.json

2-core CPU: about 6 minutes for the five default points.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dmdjax.potentials import load_eam
from dmdjax.sbsam import bcc
from dmdjax.studies.sbsam_eam import EAMParameters, control_design, pin_perfect_mean, tilt_stress_response

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=float, nargs="+",
                        default=[250.0, 0.0, 250.0, 0.01, 500.0, -0.01, 500.0, 0.0, 500.0, 0.01],
                        help="T (K) and J pairs, flattened")
    parser.add_argument("--summary", type=Path, default=ROOT / "docs/data/sbsam_eam_summary.json",
                        help="a study's summary.json (its thermal expansion a(T) is used)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if len(args.points) % 2:
        parser.error(f"--points takes (T, J) pairs; got {len(args.points)} numbers")
    jax.config.update("jax_enable_x64", True)

    parameters = EAMParameters()
    expansion = json.loads(args.summary.read_text())["expansion"]
    points = np.asarray(args.points, float).reshape(-1, 2)
    temperatures, volumetric = points[:, 0], points[:, 1]
    scale = np.interp(temperatures, expansion["temperatures"], expansion["scale"]) * (1.0 + volumetric) ** (1 / 3)
    deformations = jnp.asarray(scale[:, None, None] * np.eye(3))
    perfect = bcc.BccCrystal(load_eam(parameters.potential), repeats=parameters.repeats, vacancy=False,
                             inner_radius=parameters.inner_radius)
    references = [bcc.reference(perfect, f)._replace(relaxed_all=None, hessian=None) for f in deformations]
    stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *references)
    start = time.perf_counter()
    biases, offsets, _, _ = pin_perfect_mean(
        perfect, deformations, jnp.asarray(temperatures), stacked, jax.random.PRNGKey(args.seed),
        chains=parameters.tilt_chains, n_steps=parameters.tilt_steps, burn_in=parameters.sampler_burn_in,
        thin=parameters.sampler_thin, step_fraction=parameters.step_fraction, iterations=parameters.tilt_iterations)
    design = jax.jit(functools.partial(control_design, perfect))
    rows = []
    for c, (t, j) in enumerate(points):
        gradient, *rest = (np.asarray(a) for a in design(deformations[c], jnp.asarray(t), references[c]))
        response = tilt_stress_response((gradient, *rest), biases[c])
        noise = (np.einsum("kj,nj->nk", gradient, offsets[c].reshape(offsets.shape[1], -1)).std(axis=0, ddof=1)
                 / np.sqrt(offsets.shape[1]))
        rows.append({"temperature": float(t), "volumetric": float(j),
                     "pressure_response": float(np.trace(response.reshape(3, 3)) / 3),
                     "pressure_noise": float(noise[[0, 4, 8]].mean()), "bias_norm": float(np.linalg.norm(biases[c]))})
        print(f"T {t:5.0f} K, J {j:+.3f}: tilt's pressure {rows[-1]['pressure_response'] * 1e4:+.2f} "
              f"± {rows[-1]['pressure_noise'] * 1e4:.2f} ·1e-4 eV/Å³, ‖b‖ {rows[-1]['bias_norm']:.3f} 1/Å", flush=True)
    seconds = time.perf_counter() - start
    if args.json:
        args.json.write_text(json.dumps({"points": rows, "seconds": seconds, "device": jax.devices()[0].platform},
                                        indent=1))


if __name__ == "__main__":
    main()
