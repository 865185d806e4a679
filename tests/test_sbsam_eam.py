"""SB-SAM in 3-D with the Fe EAM around a vacancy (dmdjax.sbsam.bcc, dmdjax.studies.sbsam_eam)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmdjax.potentials import load_eam, resolve_potential_path
from dmdjax.sbsam import bcc, model as models
from dmdjax.studies.sbsam_eam import MeanTilt, invariant_part, thermal_score
from dmdjax.units import thermal_energy

# The checks marked slow take 26–39 s each on 2 cores (mostly XLA compiles of the 3-D EAM crystal): they run in
# the full suite, not in the fast tier.


@pytest.fixture(scope="module")
def iron():
    return load_eam("Fe_Mendelev2003")


@pytest.fixture(scope="module")
def small(iron):
    """5³ cells with a vacancy (249 atoms), the 26 atoms within 4.1 Å of it inner."""
    return bcc.BccCrystal(iron, repeats=5, inner_radius=4.1)


def _deformation(seed, size=0.02):
    e = np.random.default_rng(seed).uniform(-size, size, (3, 3))
    return jnp.asarray(np.eye(3) + 0.5 * (e + e.T))


@pytest.mark.slow
def test_energy_and_forces_match_ase(small):
    """V and −∇V against ASE's EAM calculator on a deformed, displaced crystal with a vacancy."""
    from ase import Atoms
    from ase.calculators.eam import EAM as AseEAM

    f = _deformation(0)
    u = 0.08 * jax.random.normal(jax.random.PRNGKey(0), (small.n_atoms, 3))
    positions = np.asarray(small.sites) @ np.asarray(f).T + np.asarray(u)
    atoms = Atoms(["Fe"] * small.n_atoms, positions=positions,
                  cell=np.asarray(f) @ (small.box_length * np.eye(3)), pbc=True)
    atoms.calc = AseEAM(potential=str(resolve_potential_path("Fe_Mendelev2003")))
    assert abs(float(small.energy(u, f)) - atoms.get_potential_energy()) < 1e-8 * small.n_atoms
    np.testing.assert_allclose(np.asarray(small.forces(u, f)), atoms.get_forces(), atol=1e-8)
    np.testing.assert_allclose(np.asarray(small.forces(u, f)), -np.asarray(jax.grad(small.energy)(u, f)), atol=1e-12)
    # the forces on X with the outer atoms fixed are the full forces on X
    context = small.context(u, f)
    np.testing.assert_allclose(np.asarray(small.clamped_forces(u[small.inner], f, context)),
                               np.asarray(small.forces(u, f))[small.inner], atol=1e-12)


def test_core_stress_of_every_atom_is_the_periodic_stress(iron):
    """Σ_i of the per-atom virials is ∂V/∂F: with the core the whole crystal, the core stress is the
    periodic PK stress, which is the finite-difference derivative of V."""
    crystal = bcc.BccCrystal(iron, repeats=5, vacancy=False, core_radius=100.0)
    assert crystal.core.size == crystal.n_atoms and crystal.core_is_closed
    f = _deformation(1)
    u = 0.05 * jax.random.normal(jax.random.PRNGKey(1), (crystal.n_atoms, 3))
    periodic = crystal.stress(u, f, 300.0)
    np.testing.assert_allclose(np.asarray(crystal.core_stress(u[crystal.inner], f, 300.0)), np.asarray(periodic),
                               atol=1e-12)
    # ∂V/∂F at fixed scaled coordinates s = F⁻¹x: V(F' (F⁻¹ x)) differentiated at F' = F
    scaled = jnp.linalg.solve(f, (jnp.asarray(crystal.sites) @ f.T + u).T).T

    def energy(g):
        return crystal.energy(scaled @ g.T - jnp.asarray(crystal.sites) @ g.T, g)

    volume = crystal.n_atoms * crystal.lattice_constant**3 / 2
    kinetic = crystal.n_atoms * thermal_energy(300.0) * jnp.linalg.inv(f).T / volume
    np.testing.assert_allclose(np.asarray(jax.grad(energy)(f) / volume - kinetic), np.asarray(periodic), atol=1e-12)


@pytest.mark.slow
def test_core_stress_over_every_translate_is_the_periodic_stress(iron):
    """In the perfect crystal every atom is equivalent: for one configuration, the core stress of the
    region moved to each of the N lattice sites, averaged, is its periodic stress — so E[core stress] =
    E[periodic stress], the low-noise full-system reference (scripts/sbsam_eam_periodic_reference.py)."""
    crystal = bcc.BccCrystal(iron, repeats=6, vacancy=False)
    assert crystal.core_is_closed and crystal.core.size == 9
    sites = np.asarray(crystal.sites)
    f = _deformation(2)
    u = 0.06 * jax.random.normal(jax.random.PRNGKey(2), (crystal.n_atoms, 3))

    def translate(c):  # the atom at ξ_i + (ξ_c − centre), for every i
        moved = sites + (sites[c] - crystal.centre)
        return np.linalg.norm(crystal.minimum_image(moved[:, None] - sites[None]), axis=-1).argmin(axis=1)

    regions = np.stack([translate(c)[crystal.inner] for c in range(crystal.n_atoms)])
    assert all(len(set(r)) == crystal.n_inner for r in regions)
    per_centre = jax.vmap(lambda rows: crystal.core_stress(u[rows], f, 300.0))(jnp.asarray(regions))
    np.testing.assert_allclose(np.asarray(per_centre.mean(axis=0)), np.asarray(crystal.stress(u, f, 300.0)),
                               atol=1e-12)
    assert float(jnp.max(jnp.abs(per_centre[0] - per_centre.mean(axis=0)))) > 1e-3  # one centre alone differs


def test_default_region_closes_the_core(iron):
    """Around the vacancy the inner region holds every pair partner of the core (8 first neighbours):
    the core stress is the exact local stress; all 48 cubic operations map the region onto itself."""
    crystal = bcc.BccCrystal(iron, repeats=6)
    assert (crystal.n_atoms, crystal.core.size, crystal.n_inner) == (431, 8, 168)
    assert crystal.core_is_closed and len(crystal.inner_symmetries) == 48


@pytest.mark.slow
def test_lattice_hessian_is_the_hessian(iron):
    """The perfect crystal's Hessian from three directional derivatives and the translation table is the
    energy's Hessian by autodiff (an independent path) under a general F; a vacancy is refused."""
    crystal = bcc.BccCrystal(iron, repeats=5, vacancy=False)
    f = _deformation(5) * 1.004
    exact = jax.hessian(lambda v: crystal.energy(v.reshape(-1, 3), f))(jnp.zeros(3 * crystal.n_atoms))
    np.testing.assert_allclose(np.asarray(crystal.lattice_hessian(f)), np.asarray(exact),
                               atol=1e-10 * float(jnp.max(jnp.abs(exact))))
    with pytest.raises(ValueError, match="perfect crystal"):
        bcc.BccCrystal(iron, repeats=5).lattice_hessian(f)
    # Newton steps with the lattice Hessian (the vacancy's rows removed) reach relaxed()'s u⁰ of the vacancy
    vacancy = bcc.BccCrystal(iron, repeats=5)
    kept = (3 * np.flatnonzero(crystal.centre_distance > 1e-6)[:, None] + np.arange(3)).reshape(-1)
    u, max_force = vacancy.relax(f, crystal.lattice_hessian(f)[np.ix_(kept, kept)], iterations=60)
    relaxed, _, _ = vacancy.relaxed(f)
    assert max_force < 1e-9 and float(jnp.max(jnp.abs(u - relaxed))) < 1e-9


def test_parameters_from_json():
    """run.json's parameters (lists) give back the EAMParameters; another study's keys are refused."""
    import dataclasses
    import json

    from dmdjax.studies.sbsam_eam import EAMParameters, tilt_grid, volumetric_strain

    for parameters in (EAMParameters.quick(), EAMParameters()):
        assert EAMParameters.from_json(json.loads(json.dumps(dataclasses.asdict(parameters)))) == parameters
    # the tilt's pinning points: every temperature × every volumetric strain, T-major
    t, j = tilt_grid(EAMParameters(tilt_temperatures=(200.0, 400.0, 600.0), tilt_volumetric=(-0.01, 0.01)))
    assert t.tolist() == [200.0, 200.0, 400.0, 400.0, 600.0, 600.0] and j.tolist() == [-0.01, 0.01] * 3
    np.testing.assert_allclose(volumetric_strain(np.diag([1.01, 1.0, 0.99])), 1.01 * 0.99 - 1.0, atol=1e-15)
    with pytest.raises(ValueError, match="n_sites"):
        EAMParameters.from_json({"n_sites": 3})


@pytest.mark.slow
def test_reference_linearisation_is_the_schur_complement(small):
    """S_ref linearised about u⁰ is −β(H_XX − W); H_XX − W is the Hessian of the EAM energy minimised over
    the outer atoms (checked by relaxing Y with X displaced, a separate Newton solve of the true EAM)."""
    f = _deformation(2)
    temperature = 400.0
    data = bcc.reference(small, f)
    assert float(data.max_force) < 1e-10
    m, beta = small.n_inner, 1.0 / thermal_energy(temperature)
    jacobian = jax.jacfwd(lambda x: bcc.reference_score(small, x, f, temperature, data).reshape(-1))(data.relaxed)
    # the Hessian by autodiff of the pair-list energy (an independent code path from the forces' rows)
    full = jax.hessian(lambda v: small.energy(v.reshape(-1, 3), f))(data.relaxed_all.reshape(-1))
    x = (3 * small.inner[:, None] + np.arange(3)).reshape(-1)
    y = (3 * small.outer[:, None] + np.arange(3)).reshape(-1)
    schur = full[np.ix_(x, x)] - full[np.ix_(x, y)] @ jnp.linalg.solve(full[np.ix_(y, y)], full[np.ix_(y, x)])
    np.testing.assert_allclose(np.asarray(jacobian.reshape(3 * m, 3 * m)), -beta * np.asarray(schur),
                               atol=1e-8 * beta * float(jnp.max(jnp.abs(schur))))
    # minimise the true EAM energy over Y with X displaced by δ: E(δ) − E(0) → ½ δᵀ(H_XX − W)δ
    delta = 2e-4 * jax.random.normal(jax.random.PRNGKey(2), (m, 3))
    u0 = data.relaxed_all
    outer_hessian = full[np.ix_(y, y)]
    u = u0.at[small.inner].add(delta)
    for _ in range(6):
        gradient = -small.forces(u, f)[small.outer].reshape(-1)
        u = u.at[small.outer].add(-jnp.linalg.solve(outer_hessian, gradient).reshape(-1, 3))
    rise = float(small.energy(u, f) - small.energy(u0, f))
    predicted = 0.5 * float(delta.reshape(-1) @ schur @ delta.reshape(-1))
    assert abs(rise - predicted) < 1e-3 * predicted


@pytest.mark.slow
def test_model_score_is_cubic_equivariant(small):
    """S(Gx | gFgᵀ, T) = G S(x | F, T) to 1e-10 for the SB-SAM score the study samples (reference + mean
    tilt + trained-like correction about the reference's mean, centroid split off), with a random F and
    group element; the reference relaxes anew at gFgᵀ."""
    symmetries = small.inner_symmetries
    assert len(symmetries) == 48
    network = models.CubicCorrection(atoms=small.n_inner, symmetries=symmetries, hidden=(16,))
    f = _deformation(3)
    temperature = 350.0
    params = network.init(jax.random.PRNGKey(0), f, temperature)
    params = jax.tree_util.tree_map(lambda a: a + 0.2 * jax.random.normal(jax.random.PRNGKey(1), a.shape), params)
    g_matrix, permutation = symmetries[int(np.random.default_rng(4).integers(1, 48))]
    g, permutation = jnp.asarray(g_matrix), np.asarray(permutation)
    # a mean tilt as the study fits it: point-group invariant (a projection of a random field)
    tilt = invariant_part(np.random.default_rng(6).normal(size=(small.n_inner, 3)), symmetries)
    assert np.abs(tilt).max() > 1e-3

    def score(x, deformation, method="sbsam", coefficients=None):
        # the score the study's sampler runs (thermal units, centroid split off, correction bounded)
        data = bcc.reference(small, deformation)
        if coefficients is None and method == "sbsam":
            coefficients = network.apply(params, deformation, temperature)
        bias = jnp.asarray(tilt) if method == "sbsam" else None
        return thermal_score(small, method, x, deformation, temperature, data, coefficients, bound=2.0, bias=bias)

    x = 0.5 * jax.random.normal(jax.random.PRNGKey(5), (small.n_inner, 3))
    # the untrained (zero) correction is the reference; a bad method is refused by name
    zero = jax.tree_util.tree_map(jnp.zeros_like, network.apply(params, f, temperature))
    difference = score(x, f, coefficients=zero) - score(x, f, "reference")
    assert float(jnp.max(jnp.abs(difference - (tilt - tilt.mean(0))))) < 1e-12
    with pytest.raises(ValueError, match="'exact'"):
        score(x, f, "exact")
    with pytest.raises(ValueError, match="only by, method 'sbsam'"):
        score(x, f, "reference", coefficients=zero)
    moved = jnp.zeros_like(x).at[permutation].set(x @ g.T)
    expected = jnp.zeros_like(x).at[permutation].set(score(x, f) @ g.T)
    got = score(moved, g @ f @ g.T)
    assert float(jnp.max(jnp.abs(got - expected))) < 1e-10 * float(jnp.max(jnp.abs(expected)))
    # F must be transformed with X: the untransformed condition gives another score
    assert float(jnp.max(jnp.abs(score(moved, f) - expected))) > 1e-4 * float(jnp.max(jnp.abs(expected)))


def test_mean_tilt_projection_and_line(iron):
    """invariant_part is the projection onto point-group-invariant per-atom fields (idempotent; every
    element then maps the field onto itself); MeanTilt.fit recovers a line in T exactly and its weights
    reproduce it; a single temperature is refused by name; pinning refuses a vacancy crystal."""
    from dmdjax.studies.sbsam_eam import pin_perfect_mean, region_match

    crystal = bcc.BccCrystal(iron, repeats=5, vacancy=False, inner_radius=4.0)
    symmetries = crystal.inner_symmetries
    rng = np.random.default_rng(0)
    field = rng.normal(size=(3, crystal.n_inner, 3))
    projected = invariant_part(field, symmetries)
    np.testing.assert_allclose(invariant_part(projected, symmetries), projected, atol=1e-14)
    for g, permutation in symmetries[1:6]:
        moved = np.zeros_like(projected[0])
        moved[list(permutation)] = projected[0] @ np.asarray(g).T
        np.testing.assert_allclose(moved, projected[0], atol=1e-14)
    assert np.abs(projected).max() > 0.05 and np.abs(projected.sum(axis=1)).max() < 1e-12  # no net force
    temperatures = np.array([150.0, 320.0, 480.0])
    line = projected[0][None] + projected[1][None] * temperatures[:, None, None] / 100
    tilt = MeanTilt.fit(line, temperatures)
    np.testing.assert_allclose(tilt(400.0), projected[0] + 4 * projected[1], atol=1e-12)
    np.testing.assert_array_equal(tilt(400.0, 0.02), tilt(400.0))  # a grid of one J: no J terms
    weights = MeanTilt.weights(temperatures, 0.0, [400.0])
    np.testing.assert_allclose(np.tensordot(weights, line, axes=1)[0], tilt(400.0), atol=1e-12)
    with pytest.raises(ValueError, match="undetermined"):
        MeanTilt.fit(line[:2], [300.0, 300.0])
    # on a (T, J) grid the fit recovers a bilinear field exactly, between and beyond its points
    grid_t, grid_j = np.meshgrid([200.0, 600.0], [-0.01, 0.01], indexing="ij")
    grid_t, grid_j = grid_t.reshape(-1), grid_j.reshape(-1)

    def bilinear(t, j):
        return projected[0] + projected[1] * t / 100 + j * (projected[2] * 50 + projected[1] * t / 10)

    tilt = MeanTilt.fit(np.stack([bilinear(t, j) for t, j in zip(grid_t, grid_j)]), grid_t, grid_j)
    for t, j in [(250.0, 0.01), (500.0, -0.003), (100.0, 0.04)]:
        np.testing.assert_allclose(tilt(t, j), bilinear(t, j), atol=1e-10)
    weights = MeanTilt.weights(grid_t, grid_j, [500.0], -0.003)
    np.testing.assert_allclose(weights.sum(), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="undetermined"):  # J varies at one T only: T·J undetermined
        MeanTilt.fit(np.stack([bilinear(300.0, j) for j in (-0.01, 0.01)] + [bilinear(500.0, 0.0)]),
                     [300.0, 300.0, 500.0], [-0.01, 0.01, 0.0])
    again = MeanTilt.from_json(json.loads(json.dumps(tilt.to_json())))
    np.testing.assert_array_equal(again(250.0, 0.01), tilt(250.0, 0.01))
    older = MeanTilt.from_json({"intercept": tilt.intercept.tolist(), "slope": tilt.slope.tolist()})
    np.testing.assert_array_equal(older(250.0, 0.01), tilt.intercept + 250.0 * tilt.slope)  # a line in T
    with pytest.raises(ValueError, match="one shape"):
        MeanTilt.from_json({"intercept": tilt.intercept, "slope": tilt.slope[:-1]})
    vacancy = bcc.BccCrystal(iron, repeats=5, vacancy=True, inner_radius=4.0)
    match = region_match(crystal, vacancy)
    assert len(match) == crystal.n_inner - 1 and len(set(match.tolist())) == len(match)
    with pytest.raises(ValueError, match="perfect crystal only"):
        pin_perfect_mean(vacancy, None, [300.0], None, None, chains=2, n_steps=10, burn_in=0, thin=1,
                         step_fraction=0.5)
    references = bcc.reference(crystal, jnp.eye(3))._replace(relaxed_all=None, hessian=None)
    stacked = jax.tree_util.tree_map(lambda a: a[None], references)
    with pytest.raises(ValueError, match="per temperature"):  # two temperatures, one deformation
        pin_perfect_mean(crystal, jnp.eye(3)[None], [300.0, 400.0], stacked, None, chains=2, n_steps=10,
                         burn_in=0, thin=1, step_fraction=0.5)


def test_taylor_controls_remove_a_gaussian_quadratic_exactly():
    from dmdjax.sbsam.stress import taylor_controls, zero_variance_mean

    rng = np.random.default_rng(0)
    d = 6
    m = rng.normal(size=(d, d))
    precision = m @ m.T + d * np.eye(d)
    centre = rng.normal(size=d)
    x = centre + rng.normal(size=(4000, d)) @ np.linalg.cholesky(np.linalg.inv(precision)).T
    scores = -(x - centre) @ precision
    gradient = rng.normal(size=(2, d))
    hessian = rng.normal(size=(2, d, d))
    hessian = hessian + hessian.transpose(0, 2, 1)
    values = np.stack([x @ gradient[k] + 0.5 * np.einsum("ni,ij,nj->n", x - centre, hessian[k], x - centre)
                       for k in range(2)], axis=1)
    exact = gradient @ centre + 0.5 * np.einsum("kij,ji->k", hessian, np.linalg.inv(precision))
    mean, error = zero_variance_mean(values, taylor_controls(gradient, hessian, precision, centre, scores, x), 20)
    np.testing.assert_allclose(mean, exact, atol=1e-9)
    assert np.all(error < 1e-9)
    # an observable of the first four coordinates only: given on its support, the same controls
    support = np.arange(4)
    padded_hessian = np.zeros_like(hessian)
    padded_hessian[:, :4, :4] = hessian[:, :4, :4]
    padded_gradient = np.where(np.arange(d) < 4, gradient, 0.0)
    shift = np.full((d, d), 1.0 / d)
    dense = taylor_controls(padded_gradient, padded_hessian, precision, centre, scores, x, laplacian_shift=shift)
    sparse = taylor_controls(gradient[:, :4], hessian[:, :4, :4], precision, centre, scores, x, laplacian_shift=shift,
                             support=support)
    np.testing.assert_allclose(sparse, dense, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="support"):
        taylor_controls(gradient, hessian, precision, centre, scores, x, support=support)


@pytest.mark.slow
def test_thermal_expansion_is_small_and_positive(iron):
    scale = bcc.thermal_expansion(iron, [300.0, 600.0], jax.random.PRNGKey(0), n_steps=1000, burn_in=300)
    assert 1.0 < scale[0] < scale[1] < 1.01


@pytest.mark.slow
def test_bad_input_is_refused(iron):
    from dmdjax.studies.sbsam_eam import EAMParameters

    with pytest.raises(ValueError, match="repeats"):
        bcc.BccCrystal(iron, repeats=2)
    with pytest.raises(ValueError, match="box"):
        bcc.BccCrystal(iron, repeats=4)
    with pytest.raises(ValueError, match="defects"):
        EAMParameters(defects=("dislocation",))
    with pytest.raises(ValueError, match="test condition"):
        EAMParameters(test_conditions=((0.05, 0, 0, 0, 0, 0, 300.0),))
    with pytest.raises(ValueError, match="tilt_volumetric"):
        EAMParameters(tilt_volumetric=(0.0, 0.2))
    with pytest.raises(ValueError, match="comparison_chains"):
        EAMParameters(comparison_chains=0)
    with pytest.raises(ValueError, match="deformations"):
        bcc.sample_full(bcc.BccCrystal(iron, repeats=5), jax.random.PRNGKey(0), jnp.eye(3), jnp.ones(1))
    # a melted crystal leaves the fixed pair list: refused, not silently wrong forces
    tight = bcc.BccCrystal(iron, repeats=4, skin=0.01)
    with pytest.raises(RuntimeError, match="unlisted pair"):
        bcc.sample_full(tight, jax.random.PRNGKey(0), jnp.eye(3)[None], jnp.asarray([2500.0]), replicas=1,
                        n_steps=200, thin=10, burn_in=100)
    with pytest.raises(RuntimeError, match="unlisted pair"):  # also when only the stress is kept
        bcc.sample_full(tight, jax.random.PRNGKey(0), jnp.eye(3)[None], jnp.asarray([2500.0]), replicas=1,
                        n_steps=200, thin=10, burn_in=100, observables=False)
    # an unconverged relaxation is refused (here by an impossible tolerance)
    with pytest.raises(RuntimeError, match="relaxation"):
        bcc.reference(tight, 1.01 * jnp.eye(3), tolerance=1e-30)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from dmdjax import cli

    output = tmp_path_factory.mktemp("eam") / "study"
    assert cli.main(["sbsam", "--eam", "--quick", "--output", str(output), "--no-progress"]) == 0
    return output


@pytest.mark.slow
def test_eam_study_files_and_claims(study):
    """Reduced size (5³ cells with a vacancy, 249 atoms, the 58 within 5 Å inner, one held-out condition):
    SB-SAM's core stress is much closer to the full system's than the clamped baseline's, no sample is
    discarded, the learned correction saves with its symmetries, and the summary has its documented keys."""
    import csv
    import json

    from dmdjax.sbsam import train

    summary = json.loads((study / "summary.json").read_text())
    for name in ("run.json", "results.json", "table.csv", "fig_eam_stress.png", "model-vacancy.msgpack",
                 "summary.json"):
        assert name in summary["files"] and (study / name).stat().st_size > 0
    sizes = summary["defects"]["vacancy"]["sizes"]
    assert (sizes["atoms"], sizes["inner_atoms"], sizes["core_atoms"]) == (249, 58, 8)
    # measured: SB-SAM 1.8 %, reference 2.8 %, clamped 16.3 % (full-system s.e. 1.5 %)
    assert summary["stress_error_max"] < 0.4 * summary["clamped_stress_error_max"]
    assert summary["clamped_stress_error_max"] > 0.05 and summary["error_sigma_max"] < 4.0
    assert summary["full_relative_standard_error_max"] < 0.05 and summary["discarded_samples"] == 0
    assert min(summary["defects"]["vacancy"]["smallest_precision"].values()) > 0
    assert summary["defects"]["vacancy"]["max_relaxation_force"] < 1e-8
    assert 1.0 < summary["expansion"]["scale"][0] < summary["expansion"]["scale"][1] < 1.01
    assert set(summary["seconds_to_common_error"]) >= {"full", "sbsam", "sbsam_with_setup", "reference", "clamped"}
    rows = list(csv.reader(open(study / "table.csv")))
    assert rows[0][:3] == ["defect", "strain", "temperature"] and len(rows) == 2
    model, params, metadata = train.load_checkpoint(study / "model-vacancy.msgpack")
    assert metadata["study"] == "sbsam-eam" and len(model.symmetries) == 48 and model.bound == 2.0
    bias, blocks = model.apply(params, jnp.eye(3) * 1.01, 300.0)
    # the correction has no bias of its own: the mean is the tilt's, a point-group-invariant line in T
    assert not model.bias and float(jnp.abs(bias).max()) == 0.0 and blocks.shape == (58, 3, 3)
    tilt = MeanTilt.from_json(metadata["mean_tilt"])
    at = tilt(300.0, 0.004)
    assert at.shape == (58, 3) and np.abs(at).max() > 0
    np.testing.assert_allclose(invariant_part(at, model.symmetries), at, atol=1e-12)
    assert summary["mean_tilt"]["sampling_seconds"] > 0 and len(summary["mean_tilt"]["bias_norm"]) == 2


def test_eam_option_conflicts_are_refused(tmp_path):
    from dmdjax import cli

    assert cli.main(["sbsam", "--eam", "--crystal", "--output", str(tmp_path / "a")]) == 2
    assert cli.main(["sbsam", "--upstream", "--output", str(tmp_path / "b")]) == 2
    assert cli.main(["sbsam", "--eam", "--quick", "--upstream", "--output", str(tmp_path / "c")]) == 2
    assert not any((tmp_path / name).exists() for name in "abc")


def test_tilt_stress_response_is_the_linear_mean_shift():
    """A bias b = A v (v centred) moves the mean by v, and the core stress by ∇P v; a uniform bias (a net
    force on the region, which the centring removes) moves nothing."""
    from dmdjax.studies.sbsam_eam import tilt_stress_response

    rng = np.random.default_rng(3)
    m = 4
    root = rng.normal(size=(3, 3))
    precision = np.kron(np.eye(m), root @ root.T + 3 * np.eye(3))  # the same block on every atom
    gradient = rng.normal(size=(9, 3 * m))
    shift = rng.normal(size=(m, 3))
    shift -= shift.mean(axis=0)
    design = (gradient, None, precision, np.zeros(3 * m))
    centred = (precision @ shift.reshape(-1)).reshape(m, 3)
    np.testing.assert_allclose(tilt_stress_response(design, centred), gradient @ shift.reshape(-1), rtol=1e-12)
    np.testing.assert_allclose(tilt_stress_response(design, centred + 5.0), gradient @ shift.reshape(-1),
                               rtol=1e-12)
    assert np.abs(tilt_stress_response(design, centred)).max() > 1e-3
