r"""The SB-SAM nonlinear-crystal study (issue 7; DESIGN.md §7): the inner region of a periodic Morse
crystal (:mod:`dmdjax.sbsam.crystal`, full anharmonic bonds) sampled without its surroundings.

1. Full system: BAOAB Langevin (jax-md) of the whole crystal at the training grid (ε_xx, ε_yy) ×
   T and at held-out conditions between the grid points, vmapped over conditions and replicas
   (:func:`~dmdjax.sbsam.crystal.sample_full`, with its equilibration and decorrelation checks).
2. Model: the score of the *centred* inner displacements v = u_X − ū_X (the stress does not see the
   region's rigid translation, whose precision in a 2-D crystal vanishes logarithmically with the
   system size and would make the model ill-conditioned): a reference score plus a learned,
   bounded boundary correction (:class:`~dmdjax.sbsam.model.BoundaryCorrection`), both centred,
   trained by force matching on the training grid (residual target P[−β∇_X V(X, Y) − S_ref(v)], P
   the centring; its conditional mean given v is the residual of ∇_v log ρ_v). The default
   reference is the *mean-field* score (:meth:`~dmdjax.sbsam.crystal.MorseCrystal.mean_field_score`):
   the inner atoms' Morse forces with the outer neighbours of the region at their harmonic
   conditional mean R(F) v — linearised, the harmonic oracle's Schur complement −β(H_XX − W) at the
   deformed lattice, so the network learns only the anharmonic part of what the surroundings do.
   Sampling gives the centroid an independent Gaussian (``CENTROID_STIFFNESS``).
3. Held-out conditions: the inner region alone sampled by Langevin (Leimkuhler–Matthews, thermal
   units) with (a) the SB-SAM score, (b) the *smeared* mean-field score alone — the Morse forces
   averaged over the neighbours' Gaussian conditional law (mean R v, covariance k_BT L Lᵀ), a
   physics baseline with no learning — and (c) the clamped score (outer atoms at their deformed
   sites); the precision of each at v = 0 is checked positive definite first (an error names the
   conditions otherwise); the inner stress (local bond stress with the true Morse forces, bonds
   inside the region) against the full system's, each with its standard error over independent
   chains (replicas), the means with the zero-variance control variate of each sampler's score
   (the full system's: its inner forces −β∇_X V, mean zero). Wall time to a common standard error:
   t × (s.e./target)², per method.

Outputs (folder ``output``): ``run.json``, ``model.msgpack`` (checkpoint), ``results.json``,
``table.csv`` (per held-out condition), ``fig_crystal_stress.png``, ``summary.json``.
"""

from __future__ import annotations

import csv
import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..io import atomic_path, open_study_folder, write_json, write_study_summary
from ..progress import logger
from ..sbsam import crystal as crystals, model as models, sample, train
from ..sbsam.stress import zero_variance_mean


#: The reference scores SB-SAM can correct (:class:`CrystalParameters` ``reference``): the mean-field
#: score with the outer neighbours at their harmonic conditional mean, the same averaged over their
#: conditional spread (:meth:`~dmdjax.sbsam.crystal.MorseCrystal.mean_field_score`), the clamped score.
REFERENCES = ("mean-field", "smeared-mean-field", "clamped")


@dataclasses.dataclass(frozen=True)
class CrystalParameters:
    """Settings of :func:`run_crystal_study` (defaults: ≈ 20 minutes on a 2-core CPU).

    Crystal: ``repeats`` (32, 18) cells = 1152 atoms, ``inner_radius`` 13 Å (97 inner atoms), Morse
    as in :class:`~dmdjax.sbsam.crystal.MorseCrystal`. Training grid: ε_xx, ε_yy ∈ ``train_strains``
    × T ∈ ``train_temperatures`` (27 conditions); held-out ``test_conditions`` (ε_xx, ε_yy, T)
    between them. Full system: ``replicas`` (``test_replicas`` at held-out conditions) × ``n_steps``
    BAOAB steps of ``time_step`` with friction ``friction`` after ``burn_in``, every ``thin``-th
    kept. Model: the ``reference`` score (one of ``REFERENCES``) plus the learned correction.
    Training: ``steps`` of Adam (``learning_rate``, cosine), batches of ``batch_size``, hidden widths
    of the correction's nonlinear part ``hidden``, its saturation
    ``correction_bound`` (thermal units; below the Morse bonds' largest restoring force, so where the
    network extrapolates it cannot tear an atom out of the region).
    Inner sampling: ``chains`` per held-out condition, ``sampler_burn_in`` then ``sampler_steps``
    (every ``sampler_thin``-th kept), step ``step_fraction``/λ_max (clamped precision at u = 0, thermal
    units, κ₀ = 1 eV/Å²).
    """

    repeats: tuple = (32, 18)
    inner_radius: float = 13.0
    train_strains: tuple = (-0.015, 0.0, 0.015)
    train_temperatures: tuple = (100.0, 200.0, 400.0)
    test_conditions: tuple = ((0.0075, -0.0075, 150.0), (-0.0075, 0.0075, 300.0), (0.0075, 0.0075, 300.0),
                              (-0.0075, -0.0075, 150.0), (0.01, 0.0, 250.0), (0.0, -0.01, 350.0))
    replicas: int = 4
    test_replicas: int = 16
    n_steps: int = 8000
    thin: int = 40
    burn_in: int = 2000
    time_step: float = 0.5
    friction: float = 0.1
    steps: int = 4000
    batch_size: int = 256
    learning_rate: float = 2e-3
    hidden: tuple = (64, 64)
    correction_bound: float = 2.0
    reference: str = "mean-field"
    chains: int = 64
    sampler_burn_in: int = 2000
    sampler_steps: int = 8000
    sampler_thin: int = 40
    step_fraction: float = 1.0
    seed: int = 0

    def __post_init__(self):
        for name in ("replicas", "test_replicas", "n_steps", "thin", "steps", "batch_size", "chains",
                     "sampler_steps", "sampler_thin"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)!r}")
        for steps, thin in (("n_steps", "thin"), ("sampler_steps", "sampler_thin")):
            if getattr(self, steps) % (getattr(self, thin) * (10 if steps == "n_steps" else 1)):
                raise ValueError(f"{steps} ({getattr(self, steps)}) must be a multiple of "
                                 f"{'10 × ' if steps == 'n_steps' else ''}{thin} ({getattr(self, thin)})")
        if any(t <= 0 for t in self.train_temperatures) or not self.train_strains or not self.test_conditions:
            raise ValueError("train_temperatures (K, > 0), train_strains and test_conditions must be non-empty")
        if self.test_replicas % self.replicas:
            raise ValueError(f"test_replicas ({self.test_replicas}) must be a multiple of replicas ({self.replicas})")
        for condition in self.test_conditions:
            if len(condition) != 3 or condition[2] <= 0:
                raise ValueError(f"each test condition is (eps_xx, eps_yy, T > 0); got {condition!r}")
        if self.reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}; got {self.reference!r}")
        if not self.correction_bound > 0:
            raise ValueError(f"correction_bound must be > 0 (thermal units); got {self.correction_bound!r}")
        if not 0 < self.step_fraction < 2:
            raise ValueError(f"step_fraction must be in (0, 2) (stability); got {self.step_fraction!r}")

    @classmethod
    def quick(cls, **changes):
        """A reduced run for tests and the notebook (about a minute on a CPU)."""
        settings = dict(repeats=(12, 7), inner_radius=6.5, train_strains=(-0.01, 0.01),
                        train_temperatures=(150.0, 300.0), test_conditions=((0.0, 0.0, 200.0),), replicas=2,
                        test_replicas=4, n_steps=2000, thin=20, burn_in=500, steps=600, chains=32,
                        sampler_burn_in=500, sampler_steps=2000, sampler_thin=20)
        return cls(**{**settings, **changes})


#: Precision (thermal units) of the independent Gaussian given to the inner region's centroid when
#: SB-SAM samples it: the model is of the centred displacements (the stress does not see the centroid).
CENTROID_STIFFNESS = 1.0


#: The inner samplers compared: SB-SAM (reference score + learned correction), the smeared mean-field
#: score alone (no learning), and the clamped baseline.
METHODS = ("sbsam", "mean_field", "clamped")


def _mean_fields(crystal, deformations, dtype):
    """:meth:`~dmdjax.sbsam.crystal.MorseCrystal.mean_field` (R, L) at each F ``(c, 2, 2)``, each
    distinct F computed once: ``(c, 2k, 2m)``, ``(c, k, 2, 2)``."""
    cache = {}
    for f in np.asarray(deformations):
        if f.tobytes() not in cache:
            cache[f.tobytes()] = crystal.mean_field(jnp.asarray(f, dtype))
    return tuple(jnp.stack([cache[f.tobytes()][i] for f in np.asarray(deformations)]) for i in (0, 1))


def _centred(displacement):
    """u − its mean over the atoms (axis −2)."""
    return displacement - jnp.mean(displacement, axis=-2, keepdims=True)


def grid_conditions(parameters: CrystalParameters):
    """Training grid and held-out conditions: ``((F (n, 2, 2), T (n,)), (F, T))``."""
    train_rows = [(a, b, t) for t in parameters.train_temperatures for a in parameters.train_strains
                  for b in parameters.train_strains]

    def split(rows):
        rows = np.asarray(rows, dtype=float)
        f = np.zeros((len(rows), 2, 2))
        f[:, 0, 0], f[:, 1, 1] = 1 + rows[:, 0], 1 + rows[:, 1]
        return f, rows[:, 2]

    return split(train_rows), split(parameters.test_conditions)


def _relative(estimate, exact):
    return float(np.linalg.norm(np.asarray(estimate) - np.asarray(exact)) / np.linalg.norm(np.asarray(exact)))


def _rows(samples: crystals.FullSamples, rows: slice, merge: int) -> crystals.FullSamples:
    """The conditions ``rows`` of ``samples``, every ``merge`` consecutive ones joined as one condition
    with their replicas together; ``seconds`` in proportion to the rows (the checks stay with the
    joint run)."""
    total = samples.inner.shape[0]

    def pick(array):
        array = np.asarray(array)[rows]
        return array.reshape((array.shape[0] // merge, merge * array.shape[1]) + array.shape[2:])

    arrays = [pick(a) for a in samples[:6]]
    count = len(range(*rows.indices(total)))
    return crystals.FullSamples(*arrays, samples.seconds * count / total, {})


def run_crystal_study(parameters: CrystalParameters | None = None, output=None, *, overwrite: bool = False,
                      progress: bool = True) -> dict:
    """Run the nonlinear-crystal study (module docstring) and write the folder ``output``.

    ``summary.json`` keys: ``stress_error_max`` / ``stress_error_mean`` (SB-SAM vs full system, over
    held-out conditions), ``clamped_stress_error_max`` / ``_mean``, ``mean_field_stress_error_max`` /
    ``_mean`` (the smeared mean-field score alone, no learning), ``closer_factor_min`` (clamped
    error over SB-SAM error, smallest over conditions), ``full_relative_standard_error_max``,
    ``targets`` (SB-SAM within 0.02 and ≥ 5× closer than clamped) and ``meets_targets``;
    ``force_loss_ratio`` / ``mean_field_force_loss_ratio`` (held-out force-matching loss of
    SB-SAM / of the mean-field score over the clamped score's); ``smallest_precision`` (per
    method, the smallest eigenvalue of the symmetrised −∇S at v = 0 over held-out conditions, thermal
    units);
    ``seconds_to_common_error`` — per method the wall time per held-out condition to reach a
    relative standard error of 0.2 % of the full system's stress (t × (s.e./target)², averaged over
    conditions): ``full`` (the full system's best estimate, every translate of the region, see
    :meth:`~dmdjax.sbsam.crystal.MorseCrystal.translated_inner_stress`: the reference values),
    ``full_inner`` (the full system, the region's own bonds with the zero-variance control variate
    of its inner forces — the observable SB-SAM computes), ``sbsam``, ``mean_field``, ``clamped``;
    ``checks``
    (the full-system sampler's checks, worst over all conditions); ``sizes``; ``timings`` (s);
    ``wall_seconds``; ``device``; ``dtype``.
    """
    parameters = parameters or CrystalParameters()
    if output is None:
        raise ValueError("output (a folder) is required")
    output = Path(output)
    run = open_study_folder(output, {"study": "sbsam-crystal", "parameters": dataclasses.asdict(parameters)},
                            overwrite=overwrite)
    wall = time.perf_counter()
    crystal = crystals.MorseCrystal(repeats=parameters.repeats, inner_radius=parameters.inner_radius)
    (train_f, train_t), (test_f, test_t) = grid_conditions(parameters)
    dtype = jnp.zeros(0).dtype
    key = jax.random.PRNGKey(parameters.seed)
    train_key, init_key, fit_key, sbsam_key, mean_field_key, clamped_key = jax.random.split(key, 6)
    full_options = dict(n_steps=parameters.n_steps, thin=parameters.thin, burn_in=parameters.burn_in,
                        time_step=parameters.time_step, friction=parameters.friction, progress=progress)
    # one vmapped run: the training grid, then each held-out condition test_replicas/replicas times
    repeat = parameters.test_replicas // parameters.replicas
    everything = crystals.sample_full(
        crystal, train_key, jnp.asarray(np.concatenate([train_f, np.repeat(test_f, repeat, axis=0)]), dtype),
        jnp.asarray(np.concatenate([train_t, np.repeat(test_t, repeat)]), dtype), replicas=parameters.replicas,
        **full_options)
    data = _rows(everything, slice(0, len(train_t)), 1)
    truth = _rows(everything, slice(len(train_t), None), repeat)
    checks = {"tau_inner_stress_max": max(everything.checks["tau_inner_stress"]),
              "energy_drift_z_max": float(np.max(np.abs(everything.checks["energy_drift_z"]))),
              "max_bond": everything.checks["max_bond"],
              "min_second_neighbour": everything.checks["min_second_neighbour"]}
    logger.info(f"full system: {crystal.n_atoms} atoms, {len(train_t)} training + {len(test_t)} held-out conditions; "
                f"sampling {everything.seconds:.0f} s; τ_int(inner stress) ≤ {checks['tau_inner_stress_max']:.2f} "
                f"kept samples; longest bond {checks['max_bond']:.2f} Å")

    # --- training: force matching of the boundary correction on the reference score ------------
    m = crystal.n_inner
    start = time.perf_counter()
    fields = _mean_fields(crystal, train_f, dtype), _mean_fields(crystal, test_f, dtype)  # per condition
    response_seconds = time.perf_counter() - start

    def reference(kind, inner, f, t, field):
        """The score ``kind`` (one of ``REFERENCES``) of u_X (m, 2) Å, 1/Å; ``field`` = (R, L) of the condition."""
        if kind == "clamped":
            return crystal.clamped_score(inner, f, t)
        return crystal.mean_field_score(inner, f, t, field[0], field[1] if kind == "smeared-mean-field" else None)

    kinds = (parameters.reference, "smeared-mean-field", "clamped")

    @jax.jit
    def residuals(inner, target, f, t, field):
        """What the SB-SAM reference, the smeared mean-field and the clamped scores miss of the force
        target, centred (1/Å)."""
        return jax.vmap(lambda x, y: tuple(_centred(y - reference(kind, x, f, t, field)) for kind in kinds))(
            inner, target)

    def dataset(samples, deformations, temperatures, fields):
        """Centred inner displacements and what the reference misses; also what the baselines miss."""
        count = samples.inner.shape[1] * samples.inner.shape[2]
        inner = _centred(jnp.asarray(samples.inner.reshape(-1, count, m, 2)))
        parts = [residuals(inner[c], jnp.asarray(samples.force_target[c].reshape(count, m, 2)),
                           jnp.asarray(deformations[c], dtype), jnp.asarray(temperatures[c], dtype),
                           (fields[0][c], fields[1][c]))
                 for c in range(len(temperatures))]
        joined = [jnp.concatenate([part[i] for part in parts]) for i in range(len(kinds))]
        f = jnp.repeat(jnp.asarray(deformations, dtype), count, axis=0)
        t = jnp.repeat(jnp.asarray(temperatures, dtype), count)
        return train.Dataset(inner.reshape(-1, m, 2), f, t, joined[0]), joined[1:]

    training, _ = dataset(data, train_f, train_t, fields[0])
    held_out, (smeared_residual, clamped_residual) = dataset(truth, test_f, test_t, fields[1])
    boundary = tuple(int(i) for i in np.sort(np.concatenate([2 * crystal.boundary, 2 * crystal.boundary + 1])))
    model = models.BoundaryCorrection(size=2 * m, boundary=boundary, hidden=tuple(parameters.hidden),
                                      bound=parameters.correction_bound, symmetries=crystal.inner_symmetries)
    params = model.init(init_key, jnp.zeros(2 * m, dtype), jnp.eye(2, dtype=dtype), jnp.asarray(300.0, dtype))
    start = time.perf_counter()
    params, history = train.fit(model, params, training, "force", key=fit_key, steps=parameters.steps,
                                batch_size=parameters.batch_size, learning_rate=parameters.learning_rate,
                                progress=progress)
    train_seconds = time.perf_counter() - start
    train.save_checkpoint(output / "model.msgpack", model, params,
                          {"study": "sbsam-crystal", "parameters": dataclasses.asdict(parameters)})

    def correction_angstrom(u, f, t):
        return models.score_in_angstrom(model, params, u, f, t, 1.0)

    learned = np.asarray(jax.jit(jax.vmap(correction_angstrom))(held_out.displacement, held_out.deformation,
                                                                 held_out.temperature))
    residual, clamped_norm = np.asarray(held_out.force_target), float(np.sum(np.asarray(clamped_residual) ** 2))
    force_loss_ratios = {"sbsam": float(np.sum((learned - residual) ** 2)) / clamped_norm,
                         "mean_field": float(np.sum(np.asarray(smeared_residual) ** 2)) / clamped_norm}

    # --- the inner region alone: SB-SAM, the smeared mean field and clamped --------------------
    def thermal(method: str):
        """The score of ``method`` in thermal units (κ₀ = 1 eV/Å²) of x (m, 2) at condition (F, T, index)."""
        kind = {"sbsam": parameters.reference, "mean_field": "smeared-mean-field"}.get(method, "clamped")

        def score(x, condition):
            f, t, index = condition
            length = models.thermal_length(t, 1.0).astype(x.dtype)
            if method == "clamped":
                return crystal.clamped_score(x * length, f, t) * length
            centre = jnp.mean(x, axis=0)
            v = x - centre
            out = reference(kind, v * length, f, t, (fields[1][0][index], fields[1][1][index])) * length
            if method == "sbsam":
                out = out + jnp.reshape(model.apply(params, jnp.reshape(v, (-1,)), f, t), x.shape)
            return _centred(out) - CENTROID_STIFFNESS * centre
        return score

    test_fj, test_tj = jnp.asarray(test_f, dtype), jnp.asarray(test_t, dtype)
    indices = jnp.arange(len(test_t))

    def precision(method):
        """Eigenvalues of the symmetrised −∇S at x = 0 per held-out condition (thermal units)."""
        jacobian = jax.vmap(lambda f, t, i: jax.jacfwd(lambda x: thermal(method)(x, (f, t, i)).reshape(-1))(
            jnp.zeros((m, 2), dtype)).reshape(2 * m, 2 * m))(test_fj, test_tj, indices)
        return np.asarray(jnp.linalg.eigvalsh(-0.5 * (jacobian + jnp.swapaxes(jacobian, 1, 2))))

    step = parameters.step_fraction / float(np.max(precision("clamped")))
    chains = parameters.chains
    condition = (jnp.repeat(test_fj, chains, axis=0), jnp.repeat(test_tj, chains), jnp.repeat(indices, chains))
    inner_results = {}
    for name, sample_key in zip(METHODS, (sbsam_key, mean_field_key, clamped_key)):
        smallest = precision(name).min(axis=1)
        if np.any(smallest <= 0):
            bad = [tuple(row) for row, value in zip(parameters.test_conditions, smallest) if value <= 0]
            raise RuntimeError(f"the {name} score's precision at u = 0 is not positive definite at held-out "
                               f"conditions {bad} (smallest eigenvalue {smallest.min():.3g}): its Langevin "
                               f"sampler would diverge")
        options = dict(step=step, n_steps=parameters.sampler_steps, burn_in=parameters.sampler_burn_in,
                       thin=parameters.sampler_thin, condition=condition, max_displacement=100.0)  # thermal units
        initial = jnp.zeros((len(test_t) * chains, m, 2), dtype)
        result = sample.langevin(thermal(name), sample_key, initial, **options)
        samples, seconds = np.asarray(result.samples), result.seconds
        stresses = []
        for index in range(len(test_t)):
            f, t = test_fj[index], test_tj[index]
            x = jnp.asarray(samples[index * chains:(index + 1) * chains].reshape(-1, m, 2))
            u = x * models.thermal_length(t, 1.0).astype(dtype)
            values = np.asarray(jax.vmap(lambda v: crystal.inner_stress(v, f, t))(u)).reshape(-1, 4)
            scores = np.asarray(jax.vmap(lambda v: thermal(name)(v, (f, t, index)))(x)).reshape(-1, 2 * m)
            stresses.append(zero_variance_mean(values, scores, chains))
        inner_results[name] = {"stresses": stresses, "seconds": seconds, "smallest_precision": float(smallest.min())}
        logger.info(f"{name}: {chains} chains × {parameters.sampler_steps} steps at {len(test_t)} conditions, "
                    f"{seconds:.0f} s")

    # --- the comparison -------------------------------------------------------------------------
    rows, target_error = [], 0.002
    full_seconds = truth.seconds / len(test_t)
    to_target = {name: [] for name in ("full", "full_inner") + METHODS}
    for index in range(len(test_t)):
        inner_mean, inner_se = zero_variance_mean(truth.inner_stress[index].reshape(-1, 4),
                                                  truth.force_target[index].reshape(-1, 2 * m),
                                                  parameters.test_replicas)
        per_replica = np.asarray(truth.translated_stress[index]).reshape(parameters.test_replicas, -1, 4).mean(axis=1)
        full_mean = per_replica.mean(axis=0)
        full_se = per_replica.std(axis=0, ddof=1) / np.sqrt(parameters.test_replicas)
        scale = np.linalg.norm(full_mean)
        row = {"eps_xx": float(test_f[index, 0, 0] - 1), "eps_yy": float(test_f[index, 1, 1] - 1),
               "temperature": float(test_t[index]), "full": full_mean.tolist(), "full_se": full_se.tolist(),
               "full_inner": inner_mean.tolist(), "full_inner_se": inner_se.tolist(),
               "periodic": np.asarray(truth.stress[index]).reshape(-1, 4).mean(axis=0).tolist(),
               "tau_inner_stress": crystals.integrated_autocorrelation_time(truth.inner_stress[index][..., 0, 0])}
        to_target["full"].append(full_seconds * (np.linalg.norm(full_se) / scale / target_error) ** 2)
        to_target["full_inner"].append(full_seconds * (np.linalg.norm(inner_se) / scale / target_error) ** 2)
        for name in METHODS:
            mean, se = inner_results[name]["stresses"][index]
            row[name], row[f"{name}_se"] = mean.tolist(), se.tolist()
            row[f"{name}_error"] = _relative(mean, full_mean)
            seconds = inner_results[name]["seconds"] / len(test_t)
            to_target[name].append(seconds * (np.linalg.norm(se) / scale / target_error) ** 2)
        row["full_relative_se"] = float(np.linalg.norm(full_se) / scale)
        row["closer_factor"] = row["clamped_error"] / max(row["sbsam_error"], 1e-300)
        rows.append(row)
    errors = [r["sbsam_error"] for r in rows]
    clamped_errors = [r["clamped_error"] for r in rows]
    prior_errors = [r["mean_field_error"] for r in rows]
    targets = {"stress_error": 0.02, "closer_factor": 5.0}
    closer = min(r["closer_factor"] for r in rows)
    write_json(output / "results.json", {"conditions": rows, "history": history, "checks": everything.checks})
    _write_table(output / "table.csv", rows)
    _figure(output / "fig_crystal_stress.png", rows)
    summary = {"study": "sbsam-crystal", "stress_error_max": max(errors), "stress_error_mean": float(np.mean(errors)),
               "clamped_stress_error_max": max(clamped_errors),
               "clamped_stress_error_mean": float(np.mean(clamped_errors)),
               "mean_field_stress_error_max": max(prior_errors),
               "mean_field_stress_error_mean": float(np.mean(prior_errors)), "closer_factor_min": closer,
               "full_relative_standard_error_max": max(r["full_relative_se"] for r in rows),
               "targets": targets, "meets_targets": bool(max(errors) <= targets["stress_error"]
                                                         and closer >= targets["closer_factor"]),
               "force_loss_ratio": force_loss_ratios["sbsam"],
               "mean_field_force_loss_ratio": force_loss_ratios["mean_field"],
               "smallest_precision": {name: inner_results[name]["smallest_precision"] for name in METHODS},
               "seconds_to_common_error": {"relative_standard_error": target_error,
                                           **{k: float(np.mean(v)) for k, v in to_target.items()}},
               "checks": checks,
               "sizes": {"atoms": crystal.n_atoms, "inner_atoms": m, "boundary_atoms": int(crystal.boundary.size),
                         "training_conditions": len(train_t), "held_out_conditions": len(test_t),
                         "training_samples": int(training.displacement.shape[0]),
                         "full_samples_per_held_out_condition": int(truth.inner[0].shape[0] * truth.inner[0].shape[1]),
                         "inner_samples_per_held_out_condition": chains * parameters.sampler_steps
                         // parameters.sampler_thin},
               "timings": {"full_training_sampling": data.seconds, "full_held_out_sampling": truth.seconds,
                           "train": train_seconds, "sbsam_sampling": inner_results["sbsam"]["seconds"],
                           "mean_field_sampling": inner_results["mean_field"]["seconds"],
                           "clamped_sampling": inner_results["clamped"]["seconds"],
                           "mean_field_response": response_seconds},
               "sampler_step": step, "wall_seconds": time.perf_counter() - wall, "device": run["device"],
               "dtype": run["dtype"]}
    return write_study_summary(output, summary)


def _write_table(path, rows):
    columns = ["eps_xx", "eps_yy", "temperature", "full_Pxx", "full_Pyy", "full_se", "sbsam_Pxx", "sbsam_Pyy",
               "sbsam_se", "mean_field_Pxx", "mean_field_Pyy", "clamped_Pxx", "clamped_Pyy", "sbsam_error",
               "mean_field_error", "clamped_error", "closer_factor"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for r in rows:
            writer.writerow([f"{r['eps_xx']:.4f}", f"{r['eps_yy']:.4f}", f"{r['temperature']:g}",
                             f"{r['full'][0]:.6g}", f"{r['full'][3]:.6g}", f"{np.linalg.norm(r['full_se']):.3g}",
                             f"{r['sbsam'][0]:.6g}", f"{r['sbsam'][3]:.6g}", f"{np.linalg.norm(r['sbsam_se']):.3g}",
                             f"{r['mean_field'][0]:.6g}", f"{r['mean_field'][3]:.6g}",
                             f"{r['clamped'][0]:.6g}", f"{r['clamped'][3]:.6g}", f"{r['sbsam_error']:.4g}",
                             f"{r['mean_field_error']:.4g}", f"{r['clamped_error']:.4g}",
                             f"{r['closer_factor']:.3g}"])


DISPLAY = {"full": "full system", "sbsam": "SB-SAM", "mean_field": "smeared mean field", "clamped": "clamped"}


def _figure(path, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    positions = np.arange(len(rows))
    labels = [f"{100 * r['eps_xx']:+.2g}%\n{100 * r['eps_yy']:+.2g}%\n{r['temperature']:g} K" for r in rows]
    for axis, component, name in ((axes[0], 0, "P_xx"), (axes[0], 3, "P_yy")):
        offset = -0.2 if component == 0 else 0.2
        for method, marker, colour, shift in (("full", "s", "k", -0.09), ("sbsam", "o", "C0", -0.03),
                                              ("mean_field", "^", "C2", 0.03), ("clamped", "x", "C3", 0.09)):
            axis.errorbar(positions + offset + shift,
                          [r[method][component] for r in rows],
                          yerr=[r.get(f"{method}_se", [0] * 4)[component] for r in rows], marker=marker,
                          color=colour, linestyle="none",
                          label=f"{DISPLAY[method]} ({name})" if component == 0 or method == "full" else None,
                          markerfacecolor="none" if component == 3 else colour)
    axes[0].set_xticks(positions, labels, fontsize=7)
    axes[0].set_ylabel("inner stress (eV/Å²); left P_xx, right P_yy of each pair")
    axes[0].legend(fontsize=7)
    for shift, method, colour in ((-0.27, "sbsam", "C0"), (0.0, "mean_field", "C2"), (0.27, "clamped", "C3")):
        axes[1].bar(positions + shift, [r[f"{method}_error"] for r in rows], width=0.27, label=DISPLAY[method],
                    color=colour)
    axes[1].axhline(0.02, color="k", linestyle=":", linewidth=0.8, label="target 2 %")
    axes[1].set_yscale("log")
    axes[1].set_xticks(positions, labels, fontsize=7)
    axes[1].set_ylabel("relative error vs full system")
    axes[1].legend(fontsize=7)
    figure.suptitle("Nonlinear Morse crystal: inner-region stress, held-out (F, T)")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
