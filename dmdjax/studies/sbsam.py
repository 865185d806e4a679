r"""The SB-SAM harmonic study (issue 7; DESIGN.md §7): learn ρ_e(u_X | F, T) of the inner region of a
harmonic triangular lattice, whose exact marginal is known (:mod:`dmdjax.sbsam.harmonic`), with each
score-matching loss; then sample the inner region alone and measure its stress.

Training data: exact full-system samples at ``n_conditions`` random (F, T) — F = I + ε with ε
symmetric, each component uniform in ±``strain_range``, T log-uniform in ``temperature_range`` —
``samples_per_condition`` each, with the force-matching target −β∇_X V. Test conditions (held out:
never in the training draw) are the grid uniaxial ε_xx ∈ ``test_strains`` × T ∈
``test_temperatures``. For every loss and test condition:

* the relative score error √(E‖S_θ − S*‖²/E‖S*‖²) over exact samples of ρ_e;
* the inner region alone sampled by Langevin (Leimkuhler–Matthews, in thermal units, one step
  h = ``step_fraction``/λ_max of the learned precision at u = 0 for all conditions; annealed over
  the noise levels for the denoising loss): the relative Frobenius error of the sampled covariance
  and of the inner stress (the local bond stress of :mod:`dmdjax.sbsam.stress` with the Morse
  forces) against the exact values (Gauss–Hermite over the exact marginal). The stress average uses
  the zero-variance control variates of the sampled law's own score: linear, S_θ (E[S_θ] = 0 under
  the chain's stationary law, exactly, for any step), and quadratic, S_i x_j + S_j x_i + 2δ_ij
  (mean zero under the law whose score is S_θ: exactly for a Gaussian model, whose law the
  Leimkuhler–Matthews chain samples exactly, otherwise to its O(h²) invariant-measure error). They
  remove the fluctuation of the stress up to second order in u; its standard error comes from
  the spread of the chains' means.

The clamped baseline (outer atoms fixed at the deformed lattice sites, precision βK_XX) is
evaluated exactly. Outputs (folder ``output``): ``run.json``, ``models/<loss>.msgpack``
(checkpoints, :func:`dmdjax.sbsam.train.load_checkpoint`), ``results.json`` (per loss and
condition), ``table.csv``, ``fig_stress.png``, ``fig_score_error.png``, ``summary.json``.
"""

from __future__ import annotations

import csv
import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..io import open_study_folder, write_json, write_study_summary
from ..progress import logger
from ..sbsam import harmonic, model as models, sample, stress, train

ARCHITECTURES = ("mlp", "pair")


@dataclasses.dataclass(frozen=True)
class SBSAMParameters:
    """Settings of :func:`run_harmonic_study` (defaults: ≈ 8 minutes on a 2-core CPU).

    Lattice: ``repeats`` (6, 4) two-atom cells (48 atoms), Morse r₀ 2.5 Å, D 0.3 eV, α 1.5 /Å;
    ``inner_radius`` 2.6 Å (7 inner atoms, 14 coordinates). Training: ``n_conditions`` × ``samples``
    exact samples; ``steps`` of Adam (``learning_rate``, cosine decay), minibatches of
    ``batch_size``; ``architecture`` "mlp" (:class:`~dmdjax.sbsam.model.ScoreMLP`, correction
    widths ``hidden`` if ``correction``, else the conditional Gaussian score −A(F, T)x alone, a
    gradient field by construction; with ``symmetrise`` averaged over the region's four mirror
    symmetries, so that it is exactly equivariant, as the true score is) or "pair"
    (:class:`~dmdjax.sbsam.model.PairScore`); thermal units with κ₀ = ``stiffness_scale`` eV/Å²;
    denoising at ``noise_levels`` (thermal units). Sampling: ``chains`` per test condition,
    ``burn_in`` (per noise level when annealing) then ``sampler_steps`` keeping every ``thin``-th;
    the best loss (lowest held-out score error) is sampled again longer, ``best_chains`` ×
    ``best_sampler_steps`` / ``best_thin`` per condition (thinned past the slowest mode's
    correlation time, so the samples are nearly independent).
    """

    repeats: tuple = (6, 4)
    inner_radius: float = 2.6
    strain_range: float = 0.02
    temperature_range: tuple = (200.0, 800.0)
    n_conditions: int = 64
    samples: int = 4000
    losses: tuple = train.LOSSES
    architecture: str = "mlp"
    hidden: tuple = (32,)
    correction: bool = False
    symmetrise: bool = True
    steps: int = 6000
    batch_size: int = 512
    learning_rate: float = 1e-2
    stiffness_scale: float = 1.0
    noise_levels: tuple = (0.1, 0.3, 1.0)
    test_strains: tuple = (-0.015, -0.0075, 0.0, 0.0075, 0.015)
    test_temperatures: tuple = (250.0, 450.0, 750.0)
    test_samples: int = 4000
    chains: int = 128
    burn_in: int = 500
    sampler_steps: int = 2000
    thin: int = 10
    best_chains: int = 512
    best_sampler_steps: int = 6000
    best_thin: int = 30
    step_fraction: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}; got {self.architecture!r}")
        unknown = [name for name in self.losses if name not in train.LOSSES]
        if unknown or not self.losses:
            raise ValueError(f"losses must be a non-empty subset of {train.LOSSES}; got {self.losses!r}")
        for name in ("n_conditions", "samples", "steps", "batch_size", "test_samples", "chains", "sampler_steps",
                     "thin", "best_chains", "best_sampler_steps", "best_thin"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)!r}")
        for steps, thin in (("sampler_steps", "thin"), ("best_sampler_steps", "best_thin")):
            if getattr(self, steps) % getattr(self, thin):
                raise ValueError(f"{steps} ({getattr(self, steps)}) must be a multiple of {thin} "
                                 f"({getattr(self, thin)})")
        low, high = self.temperature_range
        if not 0 < low <= high:
            raise ValueError(f"temperature_range must be 0 < low <= high (K); got {self.temperature_range!r}")
        if not 0 <= self.strain_range < 0.2:
            raise ValueError(f"strain_range must be in [0, 0.2); got {self.strain_range!r}")
        if not 0 < self.step_fraction < 2:
            raise ValueError(f"step_fraction must be in (0, 2) (stability); got {self.step_fraction!r}")
        if any(t <= 0 for t in self.test_temperatures) or not self.test_temperatures or not self.test_strains:
            raise ValueError("test_temperatures (K, > 0) and test_strains must be non-empty")

    @classmethod
    def quick(cls, **changes):
        """A reduced run for tests and the notebook (well under a minute per loss on a CPU)."""
        settings = dict(n_conditions=16, samples=1000, steps=800, test_strains=(-0.01, 0.01),
                        test_temperatures=(300.0, 700.0), test_samples=1000, chains=32, burn_in=200,
                        sampler_steps=400, best_chains=64, best_sampler_steps=1000, best_thin=20)
        return cls(**{**settings, **changes})


def conditions(parameters: SBSAMParameters):
    """Training conditions (random, seeded) and test conditions (the grid): ``(F (n, 2, 2), T (n,))`` each."""
    rng = np.random.default_rng(parameters.seed)
    strain = rng.uniform(-parameters.strain_range, parameters.strain_range, (parameters.n_conditions, 3))
    train_f = np.stack([[[1 + a, c], [c, 1 + b]] for a, b, c in strain])
    low, high = np.log(parameters.temperature_range)
    train_t = np.exp(rng.uniform(low, high, parameters.n_conditions))
    grid = [(e, t) for t in parameters.test_temperatures for e in parameters.test_strains]
    test_f = np.stack([[[1 + e, 0.0], [0.0, 1.0]] for e, _ in grid])
    test_t = np.array([t for _, t in grid], dtype=float)
    return (train_f, train_t), (test_f, test_t)


def training_data(lattice, deformations, temperatures, samples: int, key) -> train.Dataset:
    """Exact full-system samples at each condition, concatenated (a :class:`~dmdjax.sbsam.train.Dataset`)."""
    dtype = jnp.zeros(0).dtype
    parts = []
    for f, t, k in zip(deformations, temperatures, jax.random.split(key, len(temperatures))):
        f = jnp.asarray(f, dtype)
        inner, _, target = lattice.sample(k, f, float(t), samples)
        parts.append(train.Dataset(inner, jnp.broadcast_to(f, (samples, 2, 2)), jnp.full(samples, float(t), dtype),
                                   target))
    return train.Dataset(*(jnp.concatenate(arrays) for arrays in zip(*parts)))


def make_model(parameters: SBSAMParameters, lattice):
    size = 2 * lattice.n_inner
    if parameters.architecture == "mlp":
        return models.ScoreMLP(size=size, hidden=tuple(parameters.hidden), correction=parameters.correction,
                               symmetries=lattice.inner_symmetries if parameters.symmetrise else ())
    sites, box = lattice.reference
    centred = sites[lattice.inner] - 0.5 * box.sum(axis=0)
    return models.PairScore(sites=tuple(map(tuple, centred.tolist())), hidden=tuple(parameters.hidden))


def thermal_score(model, params, denoising: bool):
    """S(x, (F, T)[, σ]) in thermal units (σ = 0 is the noise-free score of a denoising model)."""
    def score(x, condition, sigma=None):
        deformation, temperature = condition
        flat = jnp.reshape(x, (-1,))
        if denoising:
            out = model.apply(params, flat, deformation, temperature, 0.0 if sigma is None else sigma)
        else:
            out = model.apply(params, flat, deformation, temperature)
        return jnp.reshape(out, jnp.shape(x))
    return score


def _relative(estimate, exact):
    return float(np.linalg.norm(np.asarray(estimate) - np.asarray(exact)) / np.linalg.norm(np.asarray(exact)))


def evaluate_sampler(lattice, model, params, parameters: SBSAMParameters, test, exact, denoising: bool, key,
                     best: bool = False):
    """Sample the inner region alone at every test condition (``best``: the longer run); per
    condition: covariance error, stress (zero-variance mean and standard error) and its error
    against ``exact`` (per condition: covariance (2m, 2m) Å², stress (4,)); ``(results, step, seconds)``."""
    deformations, temperatures = (jnp.asarray(a) for a in test)
    chains, n_steps, thin = ((parameters.best_chains, parameters.best_sampler_steps, parameters.best_thin) if best
                             else (parameters.chains, parameters.sampler_steps, parameters.thin))
    n_test, size = len(temperatures), 2 * lattice.n_inner
    score = thermal_score(model, params, denoising)
    jacobian = jax.vmap(lambda f, t: jax.jacfwd(lambda x: score(x, (f, t)))(jnp.zeros(size, f.dtype)))(
        deformations, temperatures)
    largest = float(jnp.max(jnp.linalg.eigvalsh(-0.5 * (jacobian + jnp.swapaxes(jacobian, 1, 2)))))
    step = parameters.step_fraction / largest
    condition = (jnp.repeat(deformations, chains, axis=0), jnp.repeat(temperatures, chains))
    start = time.perf_counter()
    result = sample.langevin(score, key, jnp.zeros((n_test * chains, lattice.n_inner, 2), deformations.dtype),
                             step=step, n_steps=n_steps, burn_in=parameters.burn_in, thin=thin, condition=condition,
                             noise_levels=(*parameters.noise_levels, 0.0) if denoising else None)
    samples = jax.block_until_ready(result.samples)
    seconds = time.perf_counter() - start
    kept = samples.shape[1]
    results = []
    for index, (exact_covariance, exact_stress) in enumerate(exact):
        f, t = deformations[index], float(temperatures[index])
        length = float(models.thermal_length(t, parameters.stiffness_scale))
        x = samples[index * chains:(index + 1) * chains].reshape(chains * kept, lattice.n_inner, 2)
        u = x * length
        flat = np.asarray(u.reshape(-1, size))
        covariance = flat.T @ flat / flat.shape[0]
        stresses = np.asarray(jax.vmap(lambda v: lattice.inner_stress(v, f, t))(u)).reshape(-1, 4)
        scores = np.asarray(jax.vmap(lambda v: score(v, (f, t)))(x)).reshape(-1, size)
        mean, error = stress.zero_variance_mean(stresses, scores, chains, positions=np.asarray(x).reshape(-1, size))
        results.append({"covariance_error": _relative(covariance, exact_covariance), "stress": mean.tolist(),
                        "stress_standard_error": error.tolist(), "stress_error": _relative(mean, exact_stress),
                        "stress_plain_mean": stresses.mean(axis=0).tolist()})
    return results, step, seconds


def run_harmonic_study(parameters: SBSAMParameters | None = None, output=None, *, overwrite: bool = False,
                       progress: bool = True) -> dict:
    """Train, sample and evaluate every loss of ``parameters.losses`` on the harmonic oracle; write the
    folder ``output`` (see the module docstring) and return the summary.

    ``summary.json`` keys: ``best_loss`` (lowest mean held-out score error); ``losses`` — per loss
    ``score_error_mean``/``score_error_max`` (over test conditions), ``covariance_error_max``,
    ``stress_error_max``, ``stress_relative_standard_error_max``, ``train_seconds``,
    ``sample_seconds``, ``sampler_step`` (thermal units); ``best`` — the same for the best loss's
    long sampling run, plus ``loss``; ``clamped_stress_error_max`` (the clamped baseline);
    ``targets`` (score ≤ 0.02, covariance ≤ 0.03, stress ≤ 0.01 for the best loss, long run) and
    whether they are all met, ``meets_targets``; ``sizes`` (atoms, inner atoms, training samples,
    test conditions, samples per test condition); ``wall_seconds``; ``device``; ``dtype``.
    """
    parameters = parameters or SBSAMParameters()
    if output is None:
        raise ValueError("output (a folder) is required")
    output = Path(output)
    run = open_study_folder(output, {"study": "sbsam-harmonic", "parameters": dataclasses.asdict(parameters)},
                            overwrite=overwrite)
    wall = time.perf_counter()
    lattice = harmonic.HarmonicLattice(repeats=parameters.repeats, inner_radius=parameters.inner_radius)
    (train_f, train_t), test = conditions(parameters)
    key = jax.random.PRNGKey(parameters.seed)
    data_key, test_key, key = jax.random.split(key, 3)
    data = training_data(lattice, train_f, train_t, parameters.samples, data_key)
    dtype = data.displacement.dtype
    test_f, test_t = jnp.asarray(test[0], dtype), jnp.asarray(test[1], dtype)
    test_samples = [lattice.sample(k, f, float(t), parameters.test_samples)[0]
                    for f, t, k in zip(test_f, test_t, jax.random.split(test_key, len(test_t)))]
    exact_stress = [np.asarray(lattice.exact_inner_stress(f, float(t))).reshape(4) for f, t in zip(test_f, test_t)]
    clamped_stress = [np.asarray(lattice.exact_inner_stress(f, float(t), lattice.clamped_covariance(f, float(t))))
                      .reshape(4) for f, t in zip(test_f, test_t)]
    clamped_error = [_relative(c, e) for c, e in zip(clamped_stress, exact_stress)]
    exact = [(np.asarray(lattice.inner_covariance(f, float(t))), value)
             for f, t, value in zip(test_f, test_t, exact_stress)]

    per_loss, histories, trained = {}, {}, {}
    for name in parameters.losses:
        denoising = name == "denoising"
        model = make_model(parameters, lattice)
        init_key, fit_key, sample_key, key = jax.random.split(key, 4)
        extra = (jnp.asarray(1.0, dtype),) if denoising else ()
        params = model.init(init_key, jnp.zeros(2 * lattice.n_inner, dtype), jnp.eye(2, dtype=dtype),
                            jnp.asarray(300.0, dtype), *extra)
        start = time.perf_counter()
        params, history = train.fit(model, params, data, name, key=fit_key, steps=parameters.steps,
                                    batch_size=parameters.batch_size, learning_rate=parameters.learning_rate,
                                    stiffness_scale=parameters.stiffness_scale,
                                    sigmas=jnp.asarray(parameters.noise_levels, dtype) if denoising else None,
                                    progress=progress)
        train_seconds = time.perf_counter() - start
        histories[name], trained[name] = history, (model, params)
        train.save_checkpoint(output / "models" / f"{name}.msgpack", model, params,
                              {"loss": name, "parameters": dataclasses.asdict(parameters)})
        score_errors = []
        for f, t, u in zip(test_f, test_t, test_samples):
            kwargs = {"sigma": 0.0} if denoising else {}
            learned = (lambda v, f=f, t=t: models.score_in_angstrom(model, params, v, f, t,
                                                                    parameters.stiffness_scale, **kwargs))
            score_errors.append(train.relative_score_error(learned, lambda v, f=f, t=t: lattice.score(v, f, t), u))
        sampled, step, sample_seconds = evaluate_sampler(lattice, model, params, parameters, (test_f, test_t),
                                                         exact, denoising, sample_key)
        per_loss[name] = {"score_error": score_errors, "sampled": sampled, "train_seconds": train_seconds,
                          "sample_seconds": sample_seconds, "sampler_step": step}
        logger.info(f"{name}: held-out score error {np.mean(score_errors):.4f} (max {np.max(score_errors):.4f}), "
                    f"covariance {max(r['covariance_error'] for r in sampled):.4f}, "
                    f"stress {max(r['stress_error'] for r in sampled):.4f} (clamped {max(clamped_error):.4f}); "
                    f"train {train_seconds:.0f} s, sample {sample_seconds:.0f} s")

    table = {name: _loss_row(entry, exact_stress) for name, entry in per_loss.items()}
    best = min(table, key=lambda name: table[name]["score_error_mean"])
    long_run, _, long_seconds = evaluate_sampler(lattice, *trained[best], parameters, (test_f, test_t), exact,
                                                 best == "denoising", key, best=True)
    per_loss[best]["sampled_long"] = long_run
    best_row = {**_loss_row({**per_loss[best], "sampled": long_run, "sample_seconds": long_seconds}, exact_stress),
                "loss": best}
    logger.info(f"best loss {best}, long run: covariance {best_row['covariance_error_max']:.4f}, "
                f"stress {best_row['stress_error_max']:.4f} ± {best_row['stress_relative_standard_error_max']:.4f}; "
                f"{long_seconds:.0f} s")
    targets = {"score_error": 0.02, "covariance_error": 0.03, "stress_error": 0.01}
    meets = (best_row["score_error_max"] <= targets["score_error"]
             and best_row["covariance_error_max"] <= targets["covariance_error"]
             and best_row["stress_error_max"] <= targets["stress_error"])
    write_json(output / "results.json", {
        "test_conditions": [{"deformation": f.tolist(), "temperature": float(t)} for f, t in zip(test_f, test_t)],
        "exact_stress": exact_stress, "clamped_stress": clamped_stress, "clamped_stress_error": clamped_error,
        "losses": per_loss, "histories": histories})
    _write_table(output / "table.csv", table, best_row, max(clamped_error))
    _figures(output, lattice, parameters, (test_f, test_t), per_loss, best, table)
    summary = {"study": "sbsam-harmonic", "best_loss": best, "losses": table, "best": best_row,
               "clamped_stress_error_max": max(clamped_error), "targets": targets, "meets_targets": bool(meets),
               "sizes": {"atoms": lattice.n_atoms, "inner_atoms": lattice.n_inner,
                         "training_samples": int(data.displacement.shape[0]), "test_conditions": int(len(test_t)),
                         "samples_per_test_condition": parameters.chains * parameters.sampler_steps // parameters.thin,
                         "samples_per_test_condition_best": parameters.best_chains * parameters.best_sampler_steps
                         // parameters.best_thin},
               "wall_seconds": time.perf_counter() - wall, "device": run["device"], "dtype": run["dtype"]}
    return write_study_summary(output, summary)


def _loss_row(entry, exact_stress):
    sampled = entry["sampled"]
    relative_se = [np.linalg.norm(r["stress_standard_error"]) / np.linalg.norm(e)
                   for r, e in zip(sampled, exact_stress)]
    return {"score_error_mean": float(np.mean(entry["score_error"])),
            "score_error_max": float(np.max(entry["score_error"])),
            "covariance_error_max": max(r["covariance_error"] for r in sampled),
            "stress_error_max": max(r["stress_error"] for r in sampled),
            "stress_relative_standard_error_max": float(max(relative_se)),
            "train_seconds": entry["train_seconds"], "sample_seconds": entry["sample_seconds"],
            "sampler_step": entry["sampler_step"]}


def _write_table(path, table, best_row, clamped):
    from ..io import atomic_path

    columns = ["loss", "score_error_mean", "score_error_max", "covariance_error_max", "stress_error_max",
               "stress_relative_standard_error_max", "train_seconds", "sample_seconds"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for name, row in table.items():
            writer.writerow([name] + [f"{row[c]:.5g}" for c in columns[1:]])
        writer.writerow([f"{best_row['loss']} (long run)"] + [f"{best_row[c]:.5g}" for c in columns[1:]])
        writer.writerow(["clamped baseline", "", "", "", f"{clamped:.5g}", "", "", ""])


def _figures(output, lattice, parameters, test, per_loss, best, table):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    test_f, test_t = test
    strains = 100.0 * (np.asarray(test_f[:, 0, 0]) - 1.0)
    dense = np.linspace(min(parameters.test_strains), max(parameters.test_strains), 41)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for t_index, temperature in enumerate(parameters.test_temperatures):
        colour = colours[t_index % len(colours)]
        deformations = [jnp.asarray([[1 + e, 0.0], [0.0, 1.0]], test_f.dtype) for e in dense]
        exact = np.array([np.asarray(lattice.exact_inner_stress(f, temperature)) for f in deformations])
        clamped = np.array([np.asarray(lattice.exact_inner_stress(f, temperature,
                                                                    lattice.clamped_covariance(f, temperature)))
                            for f in deformations])
        rows = np.flatnonzero(np.isclose(np.asarray(test_t), temperature))
        learned = np.array([per_loss[best]["sampled_long"][r]["stress"] for r in rows]).reshape(-1, 2, 2)
        errors = np.array([per_loss[best]["sampled_long"][r]["stress_standard_error"] for r in rows]).reshape(-1, 2, 2)
        for axis, (i, j) in zip(axes, [(0, 0), (1, 1)]):
            axis.plot(100 * dense, exact[:, i, j], color=colour, label=f"exact, {temperature:g} K")
            axis.plot(100 * dense, clamped[:, i, j], color=colour, linestyle="--", label=f"clamped, {temperature:g} K")
            axis.errorbar(strains[rows], learned[:, i, j], yerr=errors[:, i, j], color=colour, marker="o",
                          linestyle="none", label=f"SB-SAM ({best}), {temperature:g} K")
    for axis, name in zip(axes, ["P_xx", "P_yy"]):
        axis.set_xlabel("ε_xx (%)")
        axis.set_ylabel(f"inner {name} (eV/Å²)")
    axes[0].legend(fontsize=7)
    figure.suptitle("Inner-region stress: SB-SAM sampling vs exact marginal vs clamped outer atoms")
    with atomic_path(output / "fig_stress.png") as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    names = list(table)
    for metric, offset in [("score_error_mean", -0.25), ("covariance_error_max", 0.0), ("stress_error_max", 0.25)]:
        axes[0].bar(np.arange(len(names)) + offset, [table[n][metric] for n in names], width=0.25, label=metric)
    axes[0].axhline(0.02, color="k", linewidth=0.8, linestyle=":")
    axes[0].set_xticks(np.arange(len(names)), names)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("relative error (held-out conditions)")
    axes[0].legend(fontsize=7)
    for t_index, temperature in enumerate(parameters.test_temperatures):
        rows = np.flatnonzero(np.isclose(np.asarray(test_t), temperature))
        for name in names:
            axes[1].plot(strains[rows], np.asarray(per_loss[name]["score_error"])[rows], marker="o",
                         color=colours[names.index(name) % len(colours)], alpha=0.4 + 0.6 * t_index /
                         max(1, len(parameters.test_temperatures) - 1),
                         label=name if t_index == len(parameters.test_temperatures) - 1 else None)
    axes[1].set_xlabel("ε_xx (%) (held-out; darker = hotter)")
    axes[1].set_ylabel("relative score error")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=7)
    with atomic_path(output / "fig_score_error.png") as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
