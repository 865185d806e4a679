r"""SB-SAM in 3-D around a vacancy (issue 27; DESIGN.md §7): bcc Fe with the Mendelev (2003) EAM.

For each defect (a vacancy, and as the control the perfect crystal) of :class:`~dmdjax.sbsam.bcc.BccCrystal`:

1. Conditions: deformation gradients F = I + ε (ε symmetric: volumetric, uniaxial and shear
   parts, each component uniform in ± ``max_strain``) and T uniform in ``temperature_range``
   drawn for training (the seed's ρ(F, T)); held-out ``test_conditions`` between them. F is the
   deformation of the crystal at T: the 0-K lattice is deformed by F · a(T)/a₀, a(T) from
   :func:`~dmdjax.sbsam.bcc.thermal_expansion` on a grid of T (interpolated).
2. Full system: jax-md BAOAB of every atom (:func:`~dmdjax.sbsam.bcc.sample_full`), vmapped
   over conditions and replicas, with its equilibration/decorrelation checks.
3. Reference per condition (:func:`~dmdjax.sbsam.bcc.reference`): the relaxed configuration at F,
   the EAM Hessian there and the Schur softening W; the reference score
   S_ref = −β[∇_X V(u_X, u⁰_Y) − W(u_X − u⁰_X)] (:func:`~dmdjax.sbsam.bcc.reference_score`).
4. Model: the score of the centred inner displacements v, S = P[S_ref + b(T) + C(v − v⁰)] (thermal
   units, P the centring, v⁰ the reference's mean). b is the **mean tilt** (:class:`MeanTilt`): the
   reference freezes the outer atoms at their mean and so misplaces the sampled mean by ~10⁻³ Å at
   500 K, which the core stress feels at the 5 % level, and neither force nor score matching on the
   study's data can learn a mean that small (docs/sbsam.md). The perfect crystal's exact mean is
   known (zero: inversion centres), so b is fitted there by inner sampling alone
   (:func:`pin_perfect_mean` of the hydrostatically strained crystal, F = (1 + J)^⅓ a(T)/a₀ · I, on a
   grid of (T, J); b(T, J) bilinear through the point-group-invariant biases, J = det F − 1 the
   volumetric strain, on which the needed tilt depends strongly) and moved atom by atom to the
   vacancy's region. b depends on the invariants T and J alone and is invariant, so the score stays
   exactly equivariant. C is the bounded,
   Oh-equivariant :class:`~dmdjax.sbsam.model.CubicCorrection` without a bias of its own (odd about
   v⁰, it leaves the mean to b), trained by force matching (target P[−β∇_X V − S_ref − b]) plus
   ``sliced_weight`` × the variance-reduced sliced score-matching loss of the whole score (one fixed
   Gaussian slice per sample; the reference's part precomputed).
5. Held-out conditions: the inner region alone sampled by Leimkuhler–Matthews Langevin with
   SB-SAM, the reference alone, and the clamped baseline (outer atoms at their deformed lattice
   sites); no sample is discarded (a diverged chain is an error). The core's local PK stress
   (:meth:`~dmdjax.sbsam.bcc.BccCrystal.core_stress`) is averaged with zero-variance control
   variates (linear and quadratic in the core coordinates, each sampler's own score; the full
   system's: its forces on X, with the centre-of-mass Laplacian) and compared with the full system's —
   for the perfect crystal its periodic stress, whose mean is the core stress's exactly (every atom
   is equivalent) and which averages all N atoms. SB-SAM's standard error includes the tilt's own
   noise (the last pinning run's, through the fit and the core stress's gradient).

Outputs (folder ``output``): ``run.json``, ``model-<defect>.msgpack`` (the correction; its metadata's
``mean_tilt`` holds b's coefficients: :meth:`MeanTilt.to_json`), ``results.json``,
``table.csv``, ``fig_eam_stress.png``, ``summary.json``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..io import atomic_path, open_study_folder, write_json, write_study_summary
from ..potentials import load_eam
from ..progress import logger
from ..sbsam import bcc, model as models, sample, train
from ..sbsam.stress import taylor_controls, zero_variance_mean
from ..units import thermal_energy

#: The inner samplers compared: SB-SAM, the reference score alone (no learning), the clamped baseline.
METHODS = ("sbsam", "reference", "clamped")
#: Precision (thermal units) of the independent Gaussian given to the region's centroid when sampling.
CENTROID_STIFFNESS = 1.0
#: The defects studied: the vacancy at the centre site, and the same region of the perfect crystal.
DEFECTS = ("vacancy", "perfect")


@dataclasses.dataclass(frozen=True)
class EAMParameters:
    """Settings of :func:`run_eam_study` (defaults: ≈ 18–30 minutes on a 2-core CPU, measured 17.5).

    System: ``potential`` (a bundled name or file), ``repeats``³ cubic cells, ``inner_radius`` (None:
    the closure of the core's pairs, 168 atoms around the vacancy), ``defects`` (of ``DEFECTS``).
    Conditions: ``train_conditions`` random (F, T) with strain components in ± ``max_strain`` and T in
    ``temperature_range``; held-out ``test_conditions`` (ε_xx, ε_yy, ε_zz, ε_yz, ε_xz, ε_xy, T).
    Thermal expansion on ``expansion_temperatures`` (``expansion_steps`` BAOAB steps per
    iteration, ``expansion_iterations`` pressure corrections). Full system: ``replicas`` (``test_replicas`` at
    held-out conditions) × ``n_steps`` BAOAB steps of ``time_step`` (friction ``friction``) after
    ``burn_in``, every ``thin``-th kept. Model: ``hidden`` widths, ``bound`` (thermal units).
    Training: ``steps`` of Adam (``learning_rate``, cosine), ``batch_size``, ``sliced_weight``.
    Inner sampling: ``chains`` per held-out condition, ``sampler_burn_in`` + ``sampler_steps`` (every
    ``sampler_thin``-th kept), step ``step_fraction``/λ_max (clamped precision, thermal units).
    Mean tilt (:func:`pin_perfect_mean`): ``tilt_iterations`` runs of ``tilt_chains`` chains ×
    ``tilt_steps`` steps of the perfect crystal's region, hydrostatically strained to each volumetric
    strain J = det F − 1 of ``tilt_volumetric``, at each of ``tilt_temperatures`` (the grid's product).
    Inner sampling: SB-SAM's ``chains`` per held-out condition; the reference's and the clamped
    baseline's ``comparison_chains`` (they are compared with the full system, not used).
    """

    potential: str = "Fe_Mendelev2003"
    repeats: int = 6
    inner_radius: float | None = None
    defects: tuple = DEFECTS
    train_conditions: int = 8
    max_strain: float = 0.02
    temperature_range: tuple = (100.0, 600.0)
    test_conditions: tuple = ((0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 250.0), (-0.008, 0.005, 0.0, 0.006, 0.0, 0.004, 500.0))
    expansion_temperatures: tuple = (100.0, 200.0, 300.0, 400.0, 500.0, 600.0)
    expansion_steps: int = 3000
    expansion_iterations: int = 2
    replicas: int = 2
    test_replicas: int = 12
    n_steps: int = 3000
    thin: int = 15
    burn_in: int = 1000
    time_step: float = 0.2
    friction: float = 0.2
    hidden: tuple = (64, 64)
    bound: float = 2.0
    steps: int = 1500
    batch_size: int = 128
    learning_rate: float = 3e-3
    sliced_weight: float = 0.1
    chains: int = 16
    comparison_chains: int = 8
    sampler_burn_in: int = 500
    sampler_steps: int = 2500
    sampler_thin: int = 10
    step_fraction: float = 0.5
    tilt_temperatures: tuple = (200.0, 600.0)
    tilt_volumetric: tuple = (-0.01, 0.01)
    tilt_chains: int = 16
    tilt_steps: int = 2500
    tilt_iterations: int = 2
    seed: int = 0

    def __post_init__(self):
        for name in ("repeats", "train_conditions", "replicas", "test_replicas", "n_steps", "thin", "steps",
                     "batch_size", "chains", "comparison_chains", "sampler_steps", "sampler_thin", "tilt_iterations"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)!r}")
        if self.n_steps % (10 * self.thin) or self.sampler_steps % self.sampler_thin:
            raise ValueError(f"n_steps ({self.n_steps}) must be a multiple of 10 × thin ({self.thin}) and "
                             f"sampler_steps ({self.sampler_steps}) of sampler_thin ({self.sampler_thin})")
        if self.tilt_chains < 2 or self.tilt_steps % self.sampler_thin:
            raise ValueError(f"tilt_chains ({self.tilt_chains}) must be >= 2 (its noise is measured between chains) "
                             f"and tilt_steps ({self.tilt_steps}) a multiple of sampler_thin ({self.sampler_thin})")
        if len(set(self.tilt_temperatures)) < 2 or min(self.tilt_temperatures) <= 0:
            raise ValueError(f"tilt_temperatures needs two distinct T > 0 (K); got {self.tilt_temperatures!r}")
        if not self.tilt_volumetric or max(abs(j) for j in self.tilt_volumetric) >= 0.1:
            raise ValueError(f"tilt_volumetric needs one or more strains J = det F - 1 in (-0.1, 0.1); got "
                             f"{self.tilt_volumetric!r}")
        if self.test_replicas % self.replicas:
            raise ValueError(f"test_replicas ({self.test_replicas}) must be a multiple of replicas ({self.replicas})")
        unknown = [d for d in self.defects if d not in DEFECTS]
        if unknown or not self.defects:
            raise ValueError(f"defects must be a non-empty subset of {DEFECTS}; got {self.defects!r}")
        low, high = self.temperature_range
        if not 0 < low < high:
            raise ValueError(f"temperature_range must be 0 < low < high (K); got {self.temperature_range!r}")
        for row in self.test_conditions:
            if len(row) != 7 or not low <= row[6] <= high or max(abs(e) for e in row[:6]) > self.max_strain:
                raise ValueError(f"each test condition is (6 strain components within ±{self.max_strain}, T in "
                                 f"{self.temperature_range}); got {row!r}")
        if not 0 < self.max_strain < 0.1 or not self.bound > 0 or not 0 < self.step_fraction < 2:
            raise ValueError("need 0 < max_strain < 0.1, bound > 0 and 0 < step_fraction < 2")

    @classmethod
    def from_json(cls, fields: dict):
        """The parameters of a run from their JSON form (``run.json``'s ``parameters``: lists for tuples).

        Raises:
            ValueError: a key that is not a parameter (another study's run.json).
        """
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"not EAMParameters fields: {sorted(unknown)}")

        def tuples(value):
            return tuple(tuples(v) for v in value) if isinstance(value, list) else value

        return cls(**{k: tuples(v) for k, v in fields.items()})

    @classmethod
    def quick(cls, **changes):
        """A reduced run for tests and CI (≈ 2 minutes on a 2-core CPU): 5³ cells, the 58 atoms within
        5 Å of the centre, the vacancy only, one held-out condition."""
        settings = dict(repeats=5, inner_radius=5.0, defects=("vacancy",), train_conditions=3,
                        test_conditions=((0.005, 0.0, -0.005, 0.0, 0.005, 0.0, 300.0),),
                        expansion_temperatures=(100.0, 600.0), expansion_steps=600, expansion_iterations=1, replicas=2, test_replicas=4, n_steps=1000,
                        thin=10, burn_in=300, steps=300, chains=8, sampler_burn_in=200, sampler_steps=600,
                        comparison_chains=8, tilt_temperatures=(150.0, 450.0), tilt_volumetric=(0.0,),
                        tilt_chains=4, tilt_steps=400, tilt_iterations=1)
        return cls(**{**settings, **changes})

    @classmethod
    def upstream(cls, **changes):
        """The upstream reference's size, for a GPU: 12³ cells (3456 sites), the region the core needs."""
        return cls(**{**dict(repeats=12, train_conditions=27, test_replicas=16, chains=64), **changes})


def symmetric_deformation(strain) -> np.ndarray:
    """F = I + ε from (ε_xx, ε_yy, ε_zz, ε_yz, ε_xz, ε_xy) ``(..., 6)``."""
    strain = np.asarray(strain, float)
    e = np.zeros(strain.shape[:-1] + (3, 3))
    for k, (i, j) in enumerate(((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))):
        e[..., i, j] = e[..., j, i] = strain[..., k]
    return np.eye(3) + e


def conditions(parameters: EAMParameters):
    """``((F (n, 3, 3), T (n,)), (F, T))``: the random training conditions and the held-out ones."""
    rng = np.random.default_rng(parameters.seed)
    strains = rng.uniform(-parameters.max_strain, parameters.max_strain, (parameters.train_conditions, 6))
    temperatures = rng.uniform(*parameters.temperature_range, parameters.train_conditions)
    test = np.asarray(parameters.test_conditions, float)
    return (symmetric_deformation(strains), temperatures), (symmetric_deformation(test[:, :6]), test[:, 6])


def tilt_grid(parameters: EAMParameters):
    """The mean tilt's pinning points ``(T (c,) K, J (c,))``: every ``tilt_temperatures`` × every
    ``tilt_volumetric`` (T-major)."""
    t, j = np.meshgrid(np.asarray(parameters.tilt_temperatures, float),
                       np.asarray(parameters.tilt_volumetric, float), indexing="ij")
    return t.reshape(-1), j.reshape(-1)


def volumetric_strain(deformations) -> np.ndarray:
    """J = det F − 1 (...,) of deformations (..., 3, 3)."""
    return np.linalg.det(np.asarray(deformations, float)) - 1.0


def _centred(x):
    return x - jnp.mean(x, axis=-2, keepdims=True)


def _stack(trees):
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


def _relative(estimate, exact):
    return float(np.linalg.norm(np.asarray(estimate) - np.asarray(exact)) / np.linalg.norm(np.asarray(exact)))


def thermal_score(crystal: bcc.BccCrystal, method: str, x, deformation, temperature, data: bcc.Reference,
                  coefficients=None, *, bound: float = 2.0, bias=None):
    """The score of one inner sampler in thermal units (x = u/ℓ, ℓ = √(k_BT/(1 eV/Å²))) at (F, T).

    ``method`` is one of :data:`METHODS`. ``"clamped"``: the outer atoms at their deformed sites.
    Otherwise the region's centroid c is split off (an independent Gaussian of precision
    :data:`CENTROID_STIFFNESS`) and the centred v = x − c gets P[S_ref(v) + C(v − v⁰) + b]: S_ref the
    reference score (:func:`~dmdjax.sbsam.bcc.reference_score`), C the learned correction
    (:func:`~dmdjax.sbsam.model.cubic_correction` with ``coefficients`` at this condition, ``"sbsam"``
    only) about the reference's centred mean v⁰ = P u⁰_X/ℓ, b an optional constant ``bias`` (m, 3) in
    thermal units (SB-SAM's: the :class:`MeanTilt` at T), P the centring.

    Arguments: x (m, 3) thermal units; F (3, 3) the total deformation; T (K); ``data`` the
    :class:`~dmdjax.sbsam.bcc.Reference` at F (its whole-crystal leaves may be None).
    Returns: (m, 3), thermal units.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if (method == "sbsam") != (coefficients is not None):
        raise ValueError(f"coefficients are needed by, and only by, method 'sbsam'; got method {method!r} with "
                         f"coefficients {'given' if coefficients is not None else 'None'}")
    if method == "clamped" and bias is not None:
        raise ValueError("bias applies to the centred scores ('sbsam', 'reference'), not to method 'clamped'")
    length = models.thermal_length(temperature, 1.0).astype(x.dtype)
    if method == "clamped":
        return crystal.clamped_score(x * length, deformation, temperature, data.lattice_context) * length
    centre = jnp.mean(x, axis=0)
    v = x - centre
    out = bcc.reference_score(crystal, v * length, deformation, temperature, data) * length
    if method == "sbsam":
        out = out + models.cubic_correction(coefficients, v - _centred(data.relaxed / length), bound)
    if bias is not None:
        out = out + bias
    return _centred(out) - CENTROID_STIFFNESS * centre


def control_design(crystal: bcc.BccCrystal, deformation, temperature, data: bcc.Reference):
    """The zero-variance control design at u⁰_X (:func:`~dmdjax.sbsam.stress.taylor_controls`): the core
    stress's gradient (9, 3m) and Hessian (9, 3m, 3m) there, the reference's precision (3m, 3m) 1/Å²
    (symmetrised) and u⁰_X (3m,) Å."""
    centre = data.relaxed.reshape(-1)
    gradient, hessian = core_stress_derivatives(crystal, centre, deformation, temperature)
    return gradient, hessian, reference_precision(crystal, deformation, temperature, data), centre


def reference_precision(crystal: bcc.BccCrystal, deformation, temperature, data: bcc.Reference):
    """−∂S_ref/∂u_X at u⁰_X (3m, 3m), 1/Å², symmetrised: the reference's precision, β(H_XX − W)."""
    m = crystal.n_inner
    precision = -jax.jacfwd(lambda u: bcc.reference_score(crystal, u.reshape(m, 3), deformation, temperature,
                                                          data).reshape(-1))(data.relaxed.reshape(-1))
    return 0.5 * (precision + precision.T)


def core_stress_derivatives(crystal: bcc.BccCrystal, inner, deformation, temperature):
    """The core stress's gradient (9, 3m) and Hessian (9, 3m, 3m) in the inner displacements at ``inner``
    (3m,) Å (:meth:`~dmdjax.sbsam.bcc.BccCrystal.core_stress`), eV/Å⁴ and eV/Å⁵."""
    m = crystal.n_inner

    def stress(u):
        return crystal.core_stress(u.reshape(m, 3), deformation, temperature).reshape(-1)

    return jax.jacfwd(stress)(inner), jax.hessian(stress)(inner)


def clamped_step(crystal: bcc.BccCrystal, deformation, temperature, data: bcc.Reference, fraction: float) -> float:
    """The inner samplers' Langevin step in thermal units: ``fraction`` / λ_max of the clamped precision at
    the deformed sites (its stiffest mode) at (F, T); ``data`` the :class:`~dmdjax.sbsam.bcc.Reference` at F."""
    m = crystal.n_inner
    precision = -jax.jacfwd(lambda u: crystal.clamped_score(u.reshape(m, 3), deformation, temperature,
                                                            data.lattice_context).reshape(-1))(jnp.zeros(3 * m))
    length = models.thermal_length(temperature, 1.0)
    return fraction / float(np.linalg.eigvalsh(np.asarray(precision)).max() * length**2)


def invariant_part(vectors, symmetries) -> np.ndarray:
    """(1/|G|) Σ_g gᵀ v_π(i): the part of per-atom vectors ``(..., m, 3)`` that the region's point group
    ``symmetries`` ((g, π), ...: g(ξ_i − c) = ξ_π(i) − c) leaves invariant (a projection)."""
    vectors = np.asarray(vectors)
    return sum(vectors[..., list(permutation), :] @ np.asarray(g) for g, permutation in symmetries) / len(symmetries)


class MeanTilt(NamedTuple):
    """SB-SAM's constant score bias (each coefficient (m, 3); 1/Å, 1/(Å K), 1/Å and 1/(Å K) per unit J)

        b(T, J) = ``intercept`` + ``slope`` · T + J · (``dilation`` + ``dilation_slope`` · T),

    J = det F − 1 the condition's volumetric strain (F relative to the crystal at T): the least-squares
    fit through the perfect crystal's mean-pinning biases (:func:`pin_perfect_mean`) on a grid of (T, J);
    a grid of one J gives a line in T (the J terms zero). Point-group invariant, and T and J are
    invariants of (gFgᵀ, T), so S(Gx | gFgᵀ) = G S(x | F) holds exactly with it."""

    intercept: np.ndarray
    slope: np.ndarray
    dilation: np.ndarray
    dilation_slope: np.ndarray

    def __call__(self, temperature, volumetric=0.0) -> np.ndarray:
        """b at T (K) and J = det F − 1, (m, 3) 1/Å."""
        temperature, volumetric = float(temperature), float(volumetric)
        return (self.intercept + self.slope * temperature
                + volumetric * (self.dilation + self.dilation_slope * temperature))

    def to_json(self) -> dict:
        """The four coefficients as nested lists (a checkpoint's ``mean_tilt`` metadata)."""
        return {name: np.asarray(value).tolist() for name, value in self._asdict().items()}

    @classmethod
    def from_json(cls, fields: dict) -> "MeanTilt":
        """The tilt from :meth:`to_json`'s form (a form without the J terms: a line in T).

        Raises:
            ValueError: the arrays are not all (m, 3) of one m.
        """
        intercept = np.asarray(fields["intercept"], float)
        rest = [np.asarray(fields.get(name, np.zeros_like(intercept)), float)
                for name in ("slope", "dilation", "dilation_slope")]
        if intercept.ndim != 2 or intercept.shape[1] != 3 or any(a.shape != intercept.shape for a in rest):
            raise ValueError(f"a mean tilt needs coefficients of one shape (m, 3); got {intercept.shape} and "
                             f"{[a.shape for a in rest]}")
        return cls(intercept, *rest)

    @staticmethod
    def design(temperatures, volumetric) -> np.ndarray:
        """The fit's design (n, 4): 1, T, J, T·J at n points (K, dimensionless)."""
        t, j = np.broadcast_arrays(np.asarray(temperatures, float), np.asarray(volumetric, float))
        return np.stack([np.ones_like(t), t, j, t * j], axis=-1)

    @classmethod
    def _solver(cls, temperatures, volumetric) -> np.ndarray:
        # (4, c): the coefficients from the biases at the grid's c points; a grid of one J fits a line in T
        temperatures = np.asarray(temperatures, float)
        volumetric = np.broadcast_to(np.asarray(volumetric, float), temperatures.shape)
        used = 2 if len(np.unique(volumetric)) == 1 else 4
        design = cls.design(temperatures, volumetric)[:, :used]
        if np.linalg.matrix_rank(design / np.abs(design).max(axis=0)) < used:
            raise ValueError(f"the tilt is undetermined by its grid (a line in T needs two distinct T; the J "
                             f"terms, two J at each of two T): T {temperatures.tolist()}, J {volumetric.tolist()}")
        return np.concatenate([np.linalg.pinv(design), np.zeros((4 - used, len(temperatures)))])

    @classmethod
    def weights(cls, temperatures, volumetric, at, at_volumetric=0.0) -> np.ndarray:
        """The fit's weights w (len(at), c): b(T*, J*) = Σ_c w_c b_c for biases b_c at the grid points
        (``temperatures``, ``volumetric``), each (c,), and (``at``, ``at_volumetric``)."""
        at = np.asarray(at, float)
        return cls.design(at, np.broadcast_to(at_volumetric, at.shape)) @ cls._solver(temperatures, volumetric)

    @classmethod
    def fit(cls, biases, temperatures, volumetric=0.0) -> "MeanTilt":
        """The fit through biases ``(c, m, 3)`` 1/Å at ``temperatures`` ``(c,)`` K and volumetric strains
        ``volumetric`` ``(c,)`` (or one for all).

        Raises:
            ValueError: fewer than two distinct T, or several J without two of them at each of two T (the
                T·J term would be undetermined).
        """
        return cls(*np.tensordot(cls._solver(temperatures, volumetric), np.asarray(biases), axes=1))


def pin_perfect_mean(crystal: bcc.BccCrystal, deformations, temperatures, references: bcc.Reference, key, *,
                     chains: int, n_steps: int, burn_in: int, thin: int, step_fraction: float, iterations: int = 2):
    """The score bias that puts the perfect crystal's sampled inner mean on its exact value, per condition.

    In the perfect crystal every site is an inversion centre of the deformed lattice, so the exact
    centred mean of the inner displacements is u⁰_X (= 0). The reference score freezes the outer
    atoms at their mean and misses ~10⁻³ Å of it at 500 K (docs/sbsam.md). Starting from b = 0, each of
    ``iterations`` inner-only runs of S_ref + b (Leimkuhler–Matthews, ``chains`` chains per condition)
    measures the Stein-controlled offset o = ⟨u − u⁰ + A⁺S⟩ (A the reference precision, S the
    sampler's score: for a Gaussian sampler o is exactly its mean minus u⁰) and steps
    b ← Π(b − A o), Π the point-group projection (:func:`invariant_part`); in linear response the
    new b is exact up to the last run's noise, so every run but the last uses half the chains and
    half the steps. No full-system sample enters.

    Arguments: ``deformations`` (c, 3, 3) total F; ``temperatures`` (c,) K; ``references`` the stacked
    :class:`~dmdjax.sbsam.bcc.Reference` (inner leaves); the Langevin step (thermal units) is
    ``step_fraction`` / the largest eigenvalue of the reference precisions.
    Returns: (b (c, m, 3) 1/Å, the last run's per-chain offsets Π o (c, chains, m, 3) Å, the step, seconds
    sampled).
    """
    if crystal.vacancy:
        raise ValueError("the exact mean is known for the perfect crystal only (vacancy=False)")
    m, count = crystal.n_inner, len(temperatures)
    if np.shape(deformations) != (count, 3, 3) or np.shape(references.relaxed) != (count, m, 3):
        raise ValueError(f"need one (3, 3) deformation and one reference of {m} inner atoms per temperature "
                         f"({count}); got deformations {np.shape(deformations)}, references' relaxed "
                         f"{np.shape(references.relaxed)}")
    symmetries = crystal.inner_symmetries
    temperatures = jnp.asarray(temperatures, jnp.asarray(deformations).dtype)
    lengths = np.asarray(models.thermal_length(temperatures, 1.0))
    picked = [jax.tree_util.tree_map(lambda a: a[c], references) for c in range(count)]
    precision = jax.jit(functools.partial(reference_precision, crystal))
    precisions = [np.asarray(precision(deformations[c], temperatures[c], picked[c])) for c in range(count)]
    pseudo_inverses = [np.linalg.pinv(a, rcond=1e-8, hermitian=True) for a in precisions]
    step = step_fraction / max(float(np.linalg.eigvalsh(a)[-1]) * float(length) ** 2
                               for a, length in zip(precisions, lengths))

    def score(x, condition):
        f, t, index, bias = condition
        data = jax.tree_util.tree_map(lambda a: a[index], references)
        return thermal_score(crystal, "reference", x, f, t, data, bias=bias)

    batched_score = jax.jit(jax.vmap(lambda x, f, t, index, bias: score(x, (f, t, index, bias)),
                                     (0, None, None, None, None)))
    start = _centred(references.relaxed / lengths[:, None, None])
    bias = np.zeros((count, m, 3))
    seconds = 0.0
    for iteration in range(iterations):
        last = iteration == iterations - 1
        run_chains = chains if last else max(2, chains // 2)
        run_steps = n_steps if last else max(thin, n_steps // (2 * thin) * thin)
        index = jnp.repeat(jnp.arange(count), run_chains)
        thermal_bias = jnp.asarray(bias * lengths[:, None, None], start.dtype)
        result = sample.langevin(score, jax.random.fold_in(key, iteration), jnp.repeat(start, run_chains, axis=0),
                                 step=step, n_steps=run_steps, burn_in=burn_in, thin=thin, max_displacement=100.0,
                                 condition=(deformations[index], temperatures[index], index, thermal_bias[index]))
        seconds += result.seconds
        samples = np.asarray(result.samples).reshape(count, run_chains, -1, m, 3)
        offsets = []
        for c in range(count):
            x = samples[c].reshape(-1, m, 3)
            scores = np.asarray(batched_score(jnp.asarray(x), deformations[c], temperatures[c], c, thermal_bias[c]))
            u = x.reshape(len(x), -1) * lengths[c]
            raw = (u - np.asarray(picked[c].relaxed).reshape(-1) + scores.reshape(len(x), -1) / lengths[c]
                   @ pseudo_inverses[c].T)
            per_chain = raw.reshape(run_chains, -1, m, 3).mean(axis=1)
            offsets.append(invariant_part(per_chain - per_chain.mean(axis=1, keepdims=True), symmetries))
            bias[c] = invariant_part(bias[c] - (precisions[c] @ offsets[-1].mean(axis=0).reshape(-1)).reshape(m, 3),
                                     symmetries)
        logger.info(f"mean pinning {iteration + 1}/{iterations}: largest offset "
                    f"{max(float(np.abs(o.mean(axis=0)).max()) for o in offsets):.2e} Å, {result.seconds:.0f} s")
    return bias, np.stack(offsets), step, seconds


def tilt_stress_response(design, bias) -> np.ndarray:
    """The core stress (9,) eV/Å³ a score bias ``bias`` (m, 3) 1/Å moves, in linear response: ∇P · A⁻¹ b̄
    (b̄ the centred bias, A and ∇P the reference precision and the core stress's gradient of ``design``,
    :func:`control_design`)."""
    gradient, _, precision, _ = design
    bias = np.asarray(bias)
    return np.asarray(gradient) @ np.linalg.solve(np.asarray(precision), (bias - bias.mean(axis=0)).reshape(-1))


def region_match(perfect: bcc.BccCrystal, crystal: bcc.BccCrystal) -> np.ndarray:
    """The indices i (m,) of the perfect crystal's inner atoms at ``crystal``'s inner sites, in its order.

    Raises:
        ValueError: some inner site of ``crystal`` is not one of the perfect crystal's.
    """
    ours, theirs = np.asarray(perfect.sites)[perfect.inner], np.asarray(crystal.sites)[crystal.inner]
    distance = np.linalg.norm(theirs[:, None] - ours[None], axis=-1)
    match = distance.argmin(axis=1)
    if not np.all(distance[np.arange(len(match)), match] < 1e-8):
        raise ValueError("the crystal's inner region is not part of the perfect crystal's")
    return match


def core_stress_and_score(crystal: bcc.BccCrystal, score, x, deformation, temperature, *, batch_size: int = 500):
    """The core's PK stress (k, 9) eV/Å³ and ``score`` (k, 3m) 1/Å at k samples x (k, m, 3) in thermal
    units (``score``: x (m, 3) → thermal units), evaluated ``batch_size`` at a time."""
    length = models.thermal_length(temperature, 1.0).astype(x.dtype)
    values = jax.lax.map(lambda y: crystal.core_stress(y * length, deformation, temperature), x, batch_size=batch_size)
    scores = jax.lax.map(score, x, batch_size=batch_size)
    return values.reshape(-1, 9), scores.reshape(x.shape[0], -1) / length


def inner_core_stress(values, scores, x, temperature, design, chains: int):
    """The core's PK stress (9,) eV/Å³ and its standard error (9,) from inner samples x (k, m, 3) (thermal
    units, ``chains`` chains of equal length, chain-major) with their core stresses ``values`` (k, 9) and
    sampler scores ``scores`` (k, 3m) 1/Å (:func:`core_stress_and_score`), averaged with the
    zero-variance controls of ``design`` (:func:`control_design`)."""
    flat = np.asarray(x).reshape(np.shape(x)[0], -1) * float(models.thermal_length(temperature, 1.0))
    return zero_variance_mean(np.asarray(values), taylor_controls(*design, np.asarray(scores), flat), chains)


def full_core_stress(crystal: bcc.BccCrystal, derivatives, centre, hessian, temperature, core_values, forces,
                     displacements, replicas: int):
    """The full system's core stress (9,) eV/Å³ and its standard error (9,) from k samples of every atom
    (``core_values`` (k, 9) or (k, 3, 3); ``forces`` −β∇V (k, n, 3) 1/Å; ``displacements`` from the centre
    of mass (k, n, 3) Å; ``replicas`` runs of equal length, replica-major), with the Gaussian controls
    designed on a whole-crystal Hessian (3n, 3n) eV/Å² about ``centre`` (n, 3) Å (the relaxed crystal: u⁰ and
    its Hessian; any symmetric approximation keeps the controls mean-zero, only less effective): the
    observable's ``derivatives`` (gradient (9, 3m), Hessian (9, 3m, 3m): :func:`core_stress_derivatives`)
    live on X's coordinates only, the controls span every atom's (the centre of mass constrained)."""
    gradient, second = derivatives
    n = crystal.n_atoms
    size = 3 * n
    coordinates = (3 * crystal.inner[:, None] + np.arange(3)).reshape(-1)
    shift = np.equal.outer(np.arange(size) % 3, np.arange(size) % 3) / n
    beta = 1.0 / float(thermal_energy(temperature))
    controls = taylor_controls(gradient, second, beta * np.asarray(hessian), np.asarray(centre).reshape(-1),
                               np.asarray(forces).reshape(-1, size),
                               np.asarray(displacements).reshape(-1, size), laplacian_shift=shift, support=coordinates)
    return zero_variance_mean(np.asarray(core_values).reshape(-1, 9), controls, replicas)


def _study_defect(parameters, crystal, key, train_f, train_t, test_f, test_t, expansion, tilt_biases, tilt_offsets,
                  output, progress):
    """Steps 2–5 of the module docstring for one crystal; returns (rows, extras). ``tilt_biases`` (c, m, 3)
    1/Å and ``tilt_offsets`` (c, chains, m, 3) Å: :func:`pin_perfect_mean` at :func:`tilt_grid`'s points, moved
    to this crystal's inner atoms."""
    dtype = jnp.zeros(0).dtype
    m = crystal.n_inner
    data_key, init_key, fit_key, slice_key, *sample_keys = jax.random.split(key, 4 + len(METHODS))
    total_train = jnp.asarray(train_f * expansion(train_t)[:, None, None], dtype)
    total_test = jnp.asarray(test_f * expansion(test_t)[:, None, None], dtype)
    start = time.perf_counter()
    # the whole crystal's Hessian is kept only where the full system's control variates need it
    references = [bcc.reference(crystal, f)._replace(relaxed_all=None, hessian=None) for f in total_train]
    references += [bcc.reference(crystal, f) for f in total_test]
    reference_seconds = time.perf_counter() - start
    train_ref, test_ref = _stack(references[:len(train_t)]), _stack(references[len(train_t):])
    max_force = float(max(r.max_force for r in references))

    repeat = parameters.test_replicas // parameters.replicas
    everything = bcc.sample_full(
        crystal, data_key, jnp.concatenate([total_train, jnp.repeat(total_test, repeat, axis=0)]),
        jnp.asarray(np.concatenate([train_t, np.repeat(test_t, repeat)]), dtype), replicas=parameters.replicas,
        n_steps=parameters.n_steps, thin=parameters.thin, burn_in=parameters.burn_in,
        time_step=parameters.time_step, friction=parameters.friction, progress=progress)
    n_train = len(train_t)

    def rows_of(array, rows, merge):
        array = np.asarray(array)[rows]
        return array.reshape((array.shape[0] // merge, -1) + array.shape[3:])

    train_inner = rows_of(everything.inner, slice(0, n_train), 1)
    train_target = rows_of(everything.force_target, slice(0, n_train), 1)
    test_inner = rows_of(everything.inner, slice(n_train, None), repeat)
    test_target = rows_of(everything.force_target, slice(n_train, None), repeat)
    test_core = rows_of(everything.core_stress, slice(n_train, None), repeat)
    test_all = rows_of(everything.displacement, slice(n_train, None), repeat)
    test_all_force = rows_of(everything.force, slice(n_train, None), repeat)
    test_periodic = rows_of(everything.stress, slice(n_train, None), repeat)
    test_seconds = everything.seconds * (everything.inner.shape[0] - n_train) / everything.inner.shape[0]
    tilt_t, tilt_j = tilt_grid(parameters)
    tilt = MeanTilt.fit(tilt_biases, tilt_t, tilt_j)
    train_j, test_j = volumetric_strain(train_f), volumetric_strain(test_f)
    train_tilt = jnp.asarray(np.stack([tilt(t, j) for t, j in zip(train_t, train_j)]) * np.asarray(
        models.thermal_length(train_t, 1.0))[:, None, None], dtype)

    # --- training data: what the reference misses, thermal units -------------------------------
    def reference_thermal(v, f, t, data):
        length = models.thermal_length(t, 1.0).astype(v.dtype)
        return _centred(bcc.reference_score(crystal, v * length, f, t, data) * length)

    @jax.jit
    def prepare(inner, target, f, t, data, slices, bias):
        # (x − x⁰, the reference + tilt score, the residual it leaves, zᵀ∇(S_ref)z), thermal units
        length = models.thermal_length(t, 1.0).astype(inner.dtype)
        v = _centred(inner)
        x = v / length
        bias = _centred(bias)

        def one(xi, yi, zi):
            score, tangent = jax.jvp(lambda y: reference_thermal(y, f, t, data), (xi,), (zi,))
            return score + bias, _centred(yi * length) - score - bias, jnp.vdot(zi, tangent)

        return (x - _centred(data.relaxed / length),) + jax.vmap(one)(x, target, slices)

    parts = []
    for c in range(n_train):
        slices = _centred(jax.random.normal(jax.random.fold_in(slice_key, c), train_inner[c].shape, dtype))
        ref_c = jax.tree_util.tree_map(lambda a: a[c], train_ref)
        x, score, residual, quadratic = prepare(jnp.asarray(train_inner[c]), jnp.asarray(train_target[c]),
                                                total_train[c], jnp.asarray(train_t[c], dtype), ref_c, slices,
                                                train_tilt[c])
        parts.append((x, score, residual, quadratic, slices, jnp.full(x.shape[0], c)))
    x_all, score_all, residual_all, quadratic_all, slices_all, index_all = (
        jnp.concatenate([p[i] for p in parts]) for i in range(6))
    network = models.CubicCorrection(atoms=m, symmetries=crystal.inner_symmetries, hidden=tuple(parameters.hidden),
                                     bound=parameters.bound, bias=False)
    train_fj = jnp.asarray(train_f, dtype)
    train_tj = jnp.asarray(train_t, dtype)
    params = network.init(init_key, train_fj[0], train_tj[0])

    def losses(p, batch):
        x, score, residual, quadratic, z, index = batch
        coefficients = jax.vmap(network.apply, (None, 0, 0))(p, train_fj, train_tj)
        picked = jax.tree_util.tree_map(lambda a: a[index], coefficients)

        def one(co, xi, si, ri, qi, zi):
            correction, tangent = jax.jvp(lambda y: _centred(models.cubic_correction(co, y, parameters.bound)),
                                          (xi,), (zi,))
            force = jnp.sum((correction - ri) ** 2)
            sliced = jnp.sum((si + correction) ** 2) + 2.0 * (qi + jnp.vdot(zi, tangent))
            return force, sliced

        force, sliced = jax.vmap(one)(picked, x, score, residual, quadratic, z)
        return jnp.mean(force), jnp.mean(sliced)

    import optax

    optimizer = optax.adam(optax.cosine_decay_schedule(parameters.learning_rate, parameters.steps))
    opt_state = optimizer.init(params)
    n_samples = x_all.shape[0]
    dataset = (x_all, score_all, residual_all, quadratic_all, slices_all, index_all)

    @jax.jit
    def update(p, state, step_key):
        batch = jax.tree_util.tree_map(
            lambda a: a[jax.random.randint(step_key, (parameters.batch_size,), 0, n_samples)], dataset)

        def objective(q):
            force, sliced = losses(q, batch)
            return force + parameters.sliced_weight * sliced, (force, sliced)

        (_, terms), gradient = jax.value_and_grad(objective, has_aux=True)(p)
        updates, state = optimizer.update(gradient, state, p)
        return optax.apply_updates(p, updates), state, terms

    start = time.perf_counter()
    history = []
    for step, step_key in enumerate(jax.random.split(fit_key, parameters.steps)):
        params, opt_state, terms = update(params, opt_state, step_key)
        if step % 100 == 0 or step == parameters.steps - 1:
            history.append((step, float(terms[0]), float(terms[1])))
    train_seconds = time.perf_counter() - start
    train.save_checkpoint(output / f"model-{'vacancy' if crystal.vacancy else 'perfect'}.msgpack", network, params,
                          {"study": "sbsam-eam", "parameters": dataclasses.asdict(parameters),
                           "mean_tilt": tilt.to_json()})
    test_fj, test_tj = jnp.asarray(test_f, dtype), jnp.asarray(test_t, dtype)
    test_coefficients = jax.vmap(network.apply, (None, 0, 0))(params, test_fj, test_tj)

    # --- the inner region alone -------------------------------------------------------------------
    inner_ref = test_ref._replace(relaxed_all=None, hessian=None)  # what the inner scores need
    lengths = models.thermal_length(test_tj, 1.0)[:, None, None]
    test_bias = jnp.asarray(np.stack([tilt(t, j) for t, j in zip(test_t, test_j)]), dtype) * lengths

    def thermal(method):
        def score(x, condition):
            f, t, index = condition
            data = jax.tree_util.tree_map(lambda a: a[index], inner_ref)
            coefficients = (jax.tree_util.tree_map(lambda a: a[index], test_coefficients) if method == "sbsam"
                            else None)
            bias = test_bias[index] if method == "sbsam" else None
            return thermal_score(crystal, method, x, f, t, data, coefficients, bound=parameters.bound, bias=bias)
        return score

    indices = jnp.arange(len(test_t))

    @functools.partial(jax.jit, static_argnums=0)
    def precision(method, at):
        jacobian = jax.vmap(lambda f, t, i, x0: jax.jacfwd(lambda x: thermal(method)(x, (f, t, i)).reshape(-1))(
            x0).reshape(3 * m, 3 * m))(total_test, test_tj, indices, at)
        return jnp.linalg.eigvalsh(-0.5 * (jacobian + jnp.swapaxes(jacobian, 1, 2)))

    relaxed_x = test_ref.relaxed / lengths
    step = parameters.step_fraction / float(np.max(precision("clamped", jnp.zeros_like(relaxed_x))))
    # control variates designed at u⁰ from the reference's precision and the core stress's Taylor terms
    design = jax.jit(functools.partial(control_design, crystal))
    designs = [tuple(np.asarray(a) for a in design(total_test[index], test_tj[index],
                                                   jax.tree_util.tree_map(lambda a: a[index], inner_ref)))
               for index in range(len(test_t))]

    @functools.partial(jax.jit, static_argnums=0)
    def stress_and_score(method, x, f, t, index):
        return core_stress_and_score(crystal, lambda y: thermal(method)(y, (f, t, index)), x, f, t)

    inner_results = {}
    for method, sample_key in zip(METHODS, sample_keys):
        chains = parameters.chains if method == "sbsam" else parameters.comparison_chains
        condition = (jnp.repeat(total_test, chains, axis=0), jnp.repeat(test_tj, chains),
                     jnp.repeat(indices, chains))
        start_x = jnp.zeros_like(relaxed_x) if method == "clamped" else _centred(relaxed_x)
        smallest = np.asarray(precision(method, start_x)).min(axis=1)
        if np.any(smallest <= 0):
            raise RuntimeError(f"the {method} score's precision is not positive definite at held-out conditions "
                               f"(smallest eigenvalue {smallest.min():.3g}): its sampler would diverge")
        result = sample.langevin(thermal(method), sample_key, jnp.repeat(start_x, chains, axis=0), step=step,
                                 n_steps=parameters.sampler_steps, burn_in=parameters.sampler_burn_in,
                                 thin=parameters.sampler_thin, condition=condition, max_displacement=100.0)
        samples = np.asarray(result.samples)
        stresses = []
        for index in range(len(test_t)):
            x = jnp.asarray(samples[index * chains:(index + 1) * chains].reshape(-1, m, 3))
            values, scores = stress_and_score(method, x, total_test[index], test_tj[index], index)
            stresses.append(inner_core_stress(values, scores, x, test_tj[index], designs[index], chains))
        inner_results[method] = {"stresses": stresses, "seconds": result.seconds, "chains": chains,
                                 "smallest_precision": float(smallest.min())}
        logger.info(f"{method}: {chains} chains × {parameters.sampler_steps} steps at {len(test_t)} conditions, "
                    f"{result.seconds:.0f} s")

    # the full system's core stress with the same control variates (its forces on X, COM-constrained)
    n_total = crystal.n_atoms
    shift = np.equal.outer(np.arange(3 * m) % 3, np.arange(3 * m) % 3) / n_total
    rows, target_error = [], 0.002
    tilt_weights = MeanTilt.weights(tilt_t, tilt_j, test_t, test_j)
    for index in range(len(test_t)):
        values = test_core[index].reshape(-1, 9)
        controls = taylor_controls(*designs[index], test_target[index].reshape(-1, 3 * m),
                                   test_inner[index].reshape(-1, 3 * m), laplacian_shift=shift)
        inner_mean, inner_se = zero_variance_mean(values, controls, parameters.test_replicas)
        full_mean, full_se = full_core_stress(crystal, designs[index][:2], test_ref.relaxed_all[index],
                                              test_ref.hessian[index], test_t[index], values, test_all_force[index],
                                              test_all[index], parameters.test_replicas)
        plain = values.reshape(parameters.test_replicas, -1, 9).mean(axis=1)
        core_mean, core_se = full_mean, full_se
        if not crystal.vacancy:  # E[core stress] = E[periodic stress] exactly; the periodic one averages N atoms
            periodic = test_periodic[index].reshape(parameters.test_replicas, -1, 9).mean(axis=1)
            full_mean, full_se = periodic.mean(axis=0), periodic.std(axis=0, ddof=1) / np.sqrt(len(periodic))
        scale = float(np.linalg.norm(full_mean))
        row = {"defect": "vacancy" if crystal.vacancy else "perfect",
               "strain": [float(e) for e in parameters.test_conditions[index][:6]], "temperature": float(test_t[index]),
               "full": full_mean.tolist(), "full_se": full_se.tolist(), "full_core": core_mean.tolist(),
               "full_core_se": core_se.tolist(), "full_inner": inner_mean.tolist(),
               "full_inner_se": inner_se.tolist(), "full_plain": plain.mean(axis=0).tolist(),
               "full_plain_se": (plain.std(axis=0, ddof=1) / np.sqrt(len(plain))).tolist(),
               "full_relative_se": float(np.linalg.norm(full_se)) / scale,
               "tau_core_stress": everything.checks["tau_core_stress"][n_train + index * repeat]}
        full_per_condition = test_seconds / len(test_t)
        row["seconds_to_target"] = {
            "full": full_per_condition * (np.linalg.norm(core_se) / scale / target_error) ** 2,
            "full_inner_controls": full_per_condition * (np.linalg.norm(inner_se) / scale / target_error) ** 2,
            "full_plain": full_per_condition * (np.linalg.norm(row["full_plain_se"]) / scale / target_error) ** 2}
        if not crystal.vacancy:
            row["seconds_to_target"]["full_periodic"] = full_per_condition * (
                np.linalg.norm(full_se) / scale / target_error) ** 2
        # the tilt's own noise: the last pinning run's offset noise n_c, through the fit, moves the mean by
        # ≈ Σ_c w_c n_c and the core stress by its gradient times that (linear response)
        projected = np.einsum("kj,cnj->cnk", designs[index][0], tilt_offsets.reshape(*tilt_offsets.shape[:2], -1))
        tilt_variance = np.sum(tilt_weights[index][:, None] ** 2 * projected.var(axis=1, ddof=1)
                               / projected.shape[1], axis=0)
        for method in METHODS:
            mean, se = inner_results[method]["stresses"][index]
            if method == "sbsam":
                row["sbsam_sampling_se"], row["sbsam_tilt_se"] = se.tolist(), np.sqrt(tilt_variance).tolist()
                se = np.sqrt(se**2 + tilt_variance)
            row[method], row[f"{method}_se"] = mean.tolist(), se.tolist()
            row[f"{method}_error"] = _relative(mean, full_mean)
            seconds = inner_results[method]["seconds"] / len(test_t)
            sampling_se = row.get(f"{method}_sampling_se", se)
            row["seconds_to_target"][method] = seconds * (np.linalg.norm(sampling_se) / scale / target_error) ** 2
        row["reference_setup_seconds"] = reference_seconds / len(references)
        row["closer_factor"] = row["clamped_error"] / max(row["sbsam_error"], 1e-300)
        row["sbsam_error_sigma"] = float(np.linalg.norm(np.asarray(row["sbsam"]) - full_mean)
                                         / np.sqrt(np.sum(np.asarray(row["sbsam_se"]) ** 2 + full_se**2)))
        rows.append(row)
    extras = {"history": history, "checks": everything.checks, "max_relaxation_force": max_force,
              "smallest_precision": {k: v["smallest_precision"] for k, v in inner_results.items()},
              "timings": {"reference": reference_seconds, "full_sampling": everything.seconds, "train": train_seconds,
                          **{f"{k}_sampling": v["seconds"] for k, v in inner_results.items()}},
              "sizes": {"atoms": crystal.n_atoms, "inner_atoms": m, "core_atoms": int(crystal.core.size),
                        "core_closed": crystal.core_is_closed, "training_samples": int(n_samples),
                        "full_samples_per_held_out_condition": int(test_inner[0].shape[0]),
                        "inner_samples_per_held_out_condition": {
                            k: v["chains"] * parameters.sampler_steps // parameters.sampler_thin
                            for k, v in inner_results.items()}},
              "final_losses": {"force": history[-1][1], "sliced": history[-1][2]}, "sampler_step": step}
    return rows, extras


def run_eam_study(parameters: EAMParameters | None = None, output=None, *, overwrite: bool = False,
                  progress: bool = True) -> dict:
    """Run the study (module docstring) and write the folder ``output``.

    ``summary.json`` keys: ``stress_error_max`` (SB-SAM vs full, relative to ‖P_full‖, over every
    defect and held-out condition), ``reference_stress_error_max``, ``clamped_stress_error_max``,
    ``closer_factor_min`` (clamped error / SB-SAM error), ``error_sigma_max`` (SB-SAM − full in units of
    their joint standard error, SB-SAM's including the tilt's noise), ``full_relative_standard_error_max``,
    ``targets``, ``meets_targets``; ``mean_tilt`` (its seconds, sampling seconds, step, the grid's
    temperatures and volumetric strains and ‖b‖ at each);
    ``seconds_to_common_error`` (per method, mean over conditions, the wall time to a 0.2 % relative
    standard error: t × (s.e./target)²; ``sbsam`` sampling only, ``sbsam_with_setup`` adds the per-
    condition relaxation + Hessian + Schur complement), ``cost_ratio`` (full / SB-SAM with setup);
    ``expansion`` (a(T)/a₀ on its grid); per defect ``defects`` (checks, sizes, timings, losses,
    smallest precisions); ``discarded_samples`` (0: none is ever dropped); ``wall_seconds``, ``device``,
    ``dtype``. ``results.json`` rows also hold ``full_core`` (the perfect crystal's core-stress estimate
    beside its periodic ``full``), ``sbsam_sampling_se`` and ``sbsam_tilt_se``.
    """
    parameters = parameters or EAMParameters()
    if output is None:
        raise ValueError("output (a folder) is required")
    output = Path(output)
    run = open_study_folder(output, {"study": "sbsam-eam", "parameters": dataclasses.asdict(parameters)},
                            overwrite=overwrite)
    wall = time.perf_counter()
    potential = load_eam(parameters.potential)
    key = jax.random.PRNGKey(parameters.seed)
    expansion_key, tilt_key, *defect_keys = jax.random.split(key, 2 + len(parameters.defects))
    (train_f, train_t), (test_f, test_t) = conditions(parameters)
    grid = np.asarray(parameters.expansion_temperatures, float)
    start = time.perf_counter()
    scale = bcc.thermal_expansion(potential, grid, expansion_key, n_steps=parameters.expansion_steps,
                                  burn_in=parameters.expansion_steps // 3, iterations=parameters.expansion_iterations)
    expansion_seconds = time.perf_counter() - start

    def expansion(t):
        return np.interp(np.asarray(t, float), grid, scale)

    logger.info(f"thermal expansion a(T)/a0 at {grid.tolist()} K: {np.round(scale, 5).tolist()}")

    # the mean tilt: the hydrostatically strained perfect crystal's region pinned to its exact mean on a
    # grid of (T, J)
    start = time.perf_counter()
    perfect = bcc.BccCrystal(potential, repeats=parameters.repeats, vacancy=False, inner_radius=parameters.inner_radius)
    tilt_t, tilt_j = tilt_grid(parameters)
    tilt_f = jnp.asarray((expansion(tilt_t) * (1.0 + tilt_j) ** (1.0 / 3.0))[:, None, None] * np.eye(3),
                         jnp.zeros(0).dtype)
    references = _stack([bcc.reference(perfect, f)._replace(relaxed_all=None, hessian=None) for f in tilt_f])
    tilt_biases, tilt_offsets, step, tilt_sampling = pin_perfect_mean(
        perfect, tilt_f, jnp.asarray(tilt_t, tilt_f.dtype), references, tilt_key, chains=parameters.tilt_chains,
        n_steps=parameters.tilt_steps, burn_in=parameters.sampler_burn_in, thin=parameters.sampler_thin,
        step_fraction=parameters.step_fraction, iterations=parameters.tilt_iterations)
    tilt_seconds = time.perf_counter() - start
    rows, per_defect = [], {}
    for defect, defect_key in zip(parameters.defects, defect_keys):
        crystal = bcc.BccCrystal(potential, repeats=parameters.repeats, vacancy=defect == "vacancy",
                                 inner_radius=parameters.inner_radius)
        match = region_match(perfect, crystal)
        defect_rows, extras = _study_defect(parameters, crystal, defect_key, train_f, train_t, test_f, test_t,
                                            expansion, tilt_biases[:, match], tilt_offsets[:, :, match], output,
                                            progress)
        rows += defect_rows
        per_defect[defect] = extras
    targets = {"stress_error": 0.02, "closer_factor": 5.0, "cost_ratio": 10.0}
    methods_seconds = {name: float(np.mean([r["seconds_to_target"][name] for r in rows]))
                       for name in ("full", "full_inner_controls", "full_plain") + METHODS}
    methods_seconds["sbsam_with_setup"] = float(np.mean([r["seconds_to_target"]["sbsam"] + r["reference_setup_seconds"]
                                                         for r in rows]))
    cost_ratio = methods_seconds["full"] / methods_seconds["sbsam_with_setup"]
    errors = [r["sbsam_error"] for r in rows]
    closer = min(r["closer_factor"] for r in rows)
    write_json(output / "results.json", {"conditions": rows, **{d: e for d, e in per_defect.items()}})
    _write_table(output / "table.csv", rows)
    _figure(output / "fig_eam_stress.png", rows)
    summary = {"study": "sbsam-eam", "stress_error_max": max(errors), "stress_error_mean": float(np.mean(errors)),
               "reference_stress_error_max": max(r["reference_error"] for r in rows),
               "clamped_stress_error_max": max(r["clamped_error"] for r in rows),
               "clamped_stress_error_min": min(r["clamped_error"] for r in rows),
               "closer_factor_min": closer, "error_sigma_max": max(r["sbsam_error_sigma"] for r in rows),
               "full_relative_standard_error_max": max(r["full_relative_se"] for r in rows),
               "targets": targets,
               "meets_targets": bool(max(errors) <= targets["stress_error"] and closer >= targets["closer_factor"]
                                     and cost_ratio >= targets["cost_ratio"]),
               "seconds_to_common_error": {"relative_standard_error": 0.002, **methods_seconds},
               "cost_ratio": cost_ratio, "discarded_samples": 0,
               "expansion": {"temperatures": grid.tolist(), "scale": scale.tolist(), "seconds": expansion_seconds},
               "mean_tilt": {"seconds": tilt_seconds, "sampling_seconds": tilt_sampling, "sampler_step": step,
                             "temperatures": tilt_t.tolist(), "volumetric": tilt_j.tolist(),
                             "bias_norm": np.linalg.norm(tilt_biases.reshape(len(tilt_t), -1), axis=1).tolist()},
               "defects": per_defect, "wall_seconds": time.perf_counter() - wall, "device": run["device"],
               "dtype": run["dtype"]}
    for extras in per_defect.values():
        extras.pop("history", None)
        extras.pop("checks", None)
    return write_study_summary(output, summary)


COMPONENTS = ("xx", "yy", "zz", "yz", "xz", "xy")
_INDEX = {"xx": 0, "yy": 4, "zz": 8, "yz": 5, "xz": 2, "xy": 1}


def _write_table(path, rows):
    columns = (["defect", "strain", "temperature"] + [f"full_P{c}" for c in COMPONENTS] + ["full_se"]
               + [f"sbsam_P{c}" for c in COMPONENTS] + ["sbsam_se", "sbsam_error", "reference_error", "clamped_error",
                                                         "closer_factor", "seconds_full", "seconds_sbsam"])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for r in rows:
            writer.writerow([r["defect"], " ".join(f"{e:+.4f}" for e in r["strain"]), f"{r['temperature']:g}"]
                            + [f"{r['full'][_INDEX[c]]:.6g}" for c in COMPONENTS]
                            + [f"{np.linalg.norm(r['full_se']):.3g}"]
                            + [f"{r['sbsam'][_INDEX[c]]:.6g}" for c in COMPONENTS]
                            + [f"{np.linalg.norm(r['sbsam_se']):.3g}", f"{r['sbsam_error']:.4g}",
                               f"{r['reference_error']:.4g}", f"{r['clamped_error']:.4g}", f"{r['closer_factor']:.3g}",
                               f"{r['seconds_to_target']['full']:.4g}", f"{r['seconds_to_target']['sbsam']:.4g}"])


def _figure(path, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temperatures = sorted({r["temperature"] for r in rows})
    figure, axes = plt.subplots(1, len(temperatures) + 1, figsize=(4.2 * (len(temperatures) + 1), 4),
                                constrained_layout=True, squeeze=False)
    axes = axes[0]
    styles = (("full", "s", "k"), ("sbsam", "o", "C0"), ("reference", "^", "C2"), ("clamped", "x", "C3"))
    for axis, temperature in zip(axes, temperatures):
        picked = [r for r in rows if r["temperature"] == temperature]
        for r in picked:
            strain = r["strain"]
            for method, marker, colour in styles:
                values = [r[method][_INDEX[c]] for c in COMPONENTS]
                errors = [r.get(f"{method}_se", [0] * 9)[_INDEX[c]] for c in COMPONENTS]
                axis.errorbar(np.asarray(strain) * 100, values, yerr=errors, marker=marker, color=colour,
                              linestyle="none", markerfacecolor="none" if r["defect"] == "perfect" else colour,
                              label=f"{method} ({r['defect']})")
        axis.set_xlabel("strain component ε (%)  [P component of the same index]")
        axis.set_ylabel("core PK stress (eV/Å³)")
        axis.set_title(f"T = {temperature:g} K")
        axis.legend(fontsize=6)
    labels = [f"{r['defect'][:3]} {r['temperature']:g} K" for r in rows]
    positions = np.arange(len(rows))
    for shift, method, colour in ((-0.27, "sbsam", "C0"), (0.0, "reference", "C2"), (0.27, "clamped", "C3")):
        axes[-1].bar(positions + shift, [r[f"{method}_error"] for r in rows], width=0.27, color=colour, label=method)
    axes[-1].axhline(0.02, color="k", linestyle=":", linewidth=0.8, label="target 2 %")
    axes[-1].set_yscale("log")
    axes[-1].set_xticks(positions, labels, fontsize=7, rotation=30)
    axes[-1].set_ylabel("‖P − P_full‖ / ‖P_full‖")
    axes[-1].legend(fontsize=7)
    figure.suptitle("bcc Fe (Mendelev EAM): core stress at held-out (F, T), inner region sampled alone")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
