"""SB-SAM foundations: the harmonic-lattice oracle (Schur complement) and the score-matching losses.

Every loss is checked by its minimiser: over linear scores S(x) = −A x every loss here is
quadratic in A, so one Newton step from A = 0 lands on the empirical minimiser, which must be the
oracle's precision (for DSM: the precision of the σ-smoothed density)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmdjax.sbsam import harmonic, losses
from dmdjax.units import BOLTZMANN_EV_PER_K

STRETCH = jnp.array([[1.02, 0.01], [0.01, 0.99]])


@pytest.fixture(scope="module")
def lattice():
    return harmonic.HarmonicLattice()


def test_schur_complement_is_the_marginal_precision(lattice):
    stiffness = lattice.stiffness_matrix(STRETCH)
    m = 2 * lattice.n_inner
    assert lattice.n_inner == 7 and stiffness.shape == (2 * (lattice.n_atoms - 1),) * 2
    np.testing.assert_allclose(stiffness, stiffness.T, atol=1e-12)
    assert float(jnp.min(jnp.linalg.eigvalsh(stiffness))) > 0  # the anchor removes the translations
    marginal = jnp.linalg.inv(stiffness)[:m, :m]  # covariance block of the full Gaussian (per k_BT)
    np.testing.assert_allclose(lattice.inner_stiffness(STRETCH), jnp.linalg.inv(marginal), rtol=1e-9, atol=1e-9)
    # the deformation changes the stiffness, smoothly
    assert float(jnp.max(jnp.abs(lattice.inner_stiffness(jnp.eye(2)) - lattice.inner_stiffness(STRETCH)))) > 0.05
    derivative = jax.jacfwd(lattice.inner_stiffness)(STRETCH)[..., 0, 0]
    step = 1e-6
    finite = (lattice.inner_stiffness(STRETCH.at[0, 0].add(step))
              - lattice.inner_stiffness(STRETCH.at[0, 0].add(-step))) / (2 * step)
    np.testing.assert_allclose(derivative, finite, rtol=1e-6, atol=1e-6)


def test_exact_samples_have_the_oracle_covariance_and_force_target(lattice):
    temperature = 300.0
    inner, outer, target = lattice.sample(jax.random.PRNGKey(0), STRETCH, temperature, 40_000)
    assert outer.shape == (40_000, lattice.n_atoms - 1 - lattice.n_inner, 2)
    x = inner.reshape(inner.shape[0], -1)
    covariance = x.T @ x / x.shape[0]
    exact = lattice.inner_covariance(STRETCH, temperature)
    assert float(jnp.linalg.norm(covariance - exact) / jnp.linalg.norm(exact)) < 0.03
    # E[f | X] is the score: regressing the force target on X recovers −βS
    regression = jnp.linalg.solve(x.T @ x, x.T @ target.reshape(x.shape)).T
    beta = 1.0 / (BOLTZMANN_EV_PER_K * temperature)
    precision = beta * lattice.inner_stiffness(STRETCH)
    assert float(jnp.linalg.norm(regression + precision) / jnp.linalg.norm(precision)) < 0.02
    np.testing.assert_allclose(lattice.score(inner[0], STRETCH, temperature).reshape(-1), -precision @ x[0],
                               rtol=1e-10)


def _linear_minimiser(loss):
    """The minimiser over A of a loss that is quadratic in A (one Newton step from 0)."""
    def flat_loss(a):
        return loss(a.reshape(SIZE, SIZE))

    zero = jnp.zeros(SIZE * SIZE)
    gradient, hessian = jax.grad(flat_loss)(zero), jax.hessian(flat_loss)(zero)
    return jnp.linalg.solve(hessian, -gradient).reshape(SIZE, SIZE)


SIZE = 14  # 7 inner atoms in 2-D


@pytest.fixture(scope="module")
def whitened(lattice):
    """Samples in thermal units x = u / √(k_BT/κ₀) (κ₀ = 1 eV/Å²) and the oracle's precision there."""
    temperature = 300.0
    kt = BOLTZMANN_EV_PER_K * temperature
    inner, _, target = lattice.sample(jax.random.PRNGKey(1), STRETCH, temperature, 12_000)
    length = jnp.sqrt(kt)
    x = inner.reshape(inner.shape[0], -1) / length
    return x, target.reshape(x.shape) * length, lattice.inner_stiffness(STRETCH)  # precision of x: S/κ₀


@pytest.mark.parametrize("name, tolerance", [("implicit", 0.04), ("hutchinson", 0.06), ("sliced", 0.06),
                                             ("force", 0.02)])
def test_each_loss_is_minimised_by_the_true_score(whitened, name, tolerance):
    x, target, precision = whitened
    keys = jax.random.split(jax.random.PRNGKey(2), x.shape[0])

    def loss(a):
        def score(y):
            return -a @ y

        per_sample = {
            "implicit": lambda y, key, f: losses.implicit_score_matching(score, y),
            "hutchinson": lambda y, key, f: losses.hutchinson_score_matching(score, y, key),
            "sliced": lambda y, key, f: losses.sliced_score_matching(score, y, key),
            "force": lambda y, key, f: losses.force_matching(score, y, f),
        }[name]
        return jnp.mean(jax.vmap(per_sample)(x, keys, target))

    found = _linear_minimiser(loss)
    assert float(jnp.linalg.norm(found - precision) / jnp.linalg.norm(precision)) < tolerance


def test_denoising_loss_is_minimised_by_the_smoothed_score(whitened):
    x, _, precision = whitened
    sigma = 0.5
    keys = jax.random.split(jax.random.PRNGKey(3), x.shape[0])

    def loss(a):
        def score(y, noise_level):
            return -a @ y

        return jnp.mean(jax.vmap(lambda y, key: losses.denoising_score_matching(score, y, key, [sigma]))(x, keys))

    smoothed = jnp.linalg.inv(jnp.linalg.inv(precision) + sigma**2 * jnp.eye(SIZE))
    found = _linear_minimiser(loss)
    assert float(jnp.linalg.norm(found - smoothed) / jnp.linalg.norm(smoothed)) < 0.05


def test_force_matching_trains_the_conditional_network_on_held_out_conditions(lattice):
    """A small network trained by force matching on 8 conditions (F, T) predicts the exact score
    at a deformation and a temperature it never saw."""
    from dmdjax.sbsam.model import ScoreMLP, score_in_angstrom
    from dmdjax.sbsam.train import Dataset, fit, relative_score_error

    def deformation(exx, eyy):
        return jnp.array([[1.0 + exx, 0.005], [0.005, 1.0 + eyy]])

    parts = []
    conditions = [(deformation(a, b), t) for a in (-0.02, 0.02) for b in (-0.02, 0.02) for t in (200.0, 600.0)]
    for index, (stretch, temperature) in enumerate(conditions):
        inner, _, target = lattice.sample(jax.random.PRNGKey(10 + index), stretch, temperature, 1000)
        parts.append(Dataset(inner, jnp.broadcast_to(stretch, (1000, 2, 2)), jnp.full(1000, temperature), target))
    data = Dataset(*(jnp.concatenate(arrays) for arrays in zip(*parts)))
    model = ScoreMLP(size=SIZE, hidden=(32,))
    initial = model.init(jax.random.PRNGKey(0), jnp.zeros(SIZE), jnp.eye(2), 300.0)
    trained, history = fit(model, initial, data, "force", key=jax.random.PRNGKey(1), steps=1500, batch_size=256,
                           learning_rate=3e-3)
    assert history[-1][1] < 0.5 * history[0][1]
    held_out, temperature = deformation(0.01, -0.005), 350.0
    samples, _, _ = lattice.sample(jax.random.PRNGKey(99), held_out, temperature, 2000)

    def error(params):
        return relative_score_error(lambda u: score_in_angstrom(model, params, u, held_out, temperature, 1.0),
                                    lambda u: lattice.score(u, held_out, temperature), samples)

    before, after = error(initial), error(trained)
    assert after < 0.1 and after < 0.2 * before
    with pytest.raises(ValueError, match="unknown loss"):
        fit(model, initial, data, "score-virial", key=jax.random.PRNGKey(1))


@pytest.mark.slow
def test_langevin_with_the_exact_score_samples_the_inner_marginal(lattice):
    """The inner region alone, driven by the oracle's score, samples the exact marginal: the
    Leimkuhler–Matthews scheme has no step bias for a Gaussian (h = 1/λ_max here; Euler–Maruyama
    would be off by hλ/2 on each mode). Chains carry their own condition (F, T); an unstable score
    is a reported failure, with every sample kept."""
    from dmdjax.sbsam import sample

    conditions = [(STRETCH, 300.0), (jnp.eye(2), 600.0)]
    precisions = [lattice.inner_stiffness(f) / (BOLTZMANN_EV_PER_K * t) for f, t in conditions]
    step = 1.0 / max(float(jnp.max(jnp.linalg.eigvalsh(a))) for a in precisions)
    chains = 512
    deformation = jnp.stack([conditions[c % 2][0] for c in range(chains)])
    temperature = jnp.array([conditions[c % 2][1] for c in range(chains)])
    initial = jnp.zeros((chains, lattice.n_inner, 2))
    result = sample.langevin(lambda u, c: lattice.score(u, *c), jax.random.PRNGKey(5), initial, step=step,
                             n_steps=4000, burn_in=1000, thin=10, condition=(deformation, temperature))
    assert result.samples.shape == (chains, 400, lattice.n_inner, 2) and not bool(jnp.any(result.diverged))
    for parity, precision in enumerate(precisions):
        x = result.samples[parity::2].reshape(-1, SIZE)
        covariance = x.T @ x / x.shape[0]
        exact = jnp.linalg.inv(precision)
        assert float(jnp.linalg.norm(covariance - exact) / jnp.linalg.norm(exact)) < 0.025  # 1.1-1.3 % seen
    with pytest.raises(sample.SamplerDivergence, match="diverged") as failure:
        sample.langevin(lambda u: -lattice.score(u, STRETCH, 300.0), jax.random.PRNGKey(6), initial[:64],
                        step=step, n_steps=2000)
    assert failure.value.result.samples.shape[0] == 64  # nothing thrown away
    with pytest.raises(ValueError, match="leading axis of length 64"):
        sample.langevin(lambda u, c: u, jax.random.PRNGKey(6), initial[:64], step=step, n_steps=10,
                        condition=temperature)


def test_inner_stress_oracle_quadrature_and_the_periodic_stress(lattice):
    """The exact inner stress (Gauss–Hermite over the marginal) equals the Monte Carlo mean of the
    bond stress over exact samples; the periodic PK stress by autodiff of the energy equals the
    bond-stress formula over all bonds, sample by sample; clamping the outer atoms changes the
    inner stress (the baseline SB-SAM must beat) while the static part does not depend on T."""
    from dmdjax.sbsam import stress

    temperature = 600.0
    exact = lattice.exact_inner_stress(STRETCH, temperature)
    np.testing.assert_allclose(lattice.exact_inner_stress(STRETCH, temperature, nodes=24), exact, rtol=1e-9)
    inner, outer, _ = lattice.sample(jax.random.PRNGKey(7), STRETCH, temperature, 20_000)
    per_sample = jax.vmap(lambda u: lattice.inner_stress(u, STRETCH, temperature))(inner)
    standard_error = jnp.std(per_sample, axis=0) / jnp.sqrt(per_sample.shape[0])
    assert float(jnp.max(jnp.abs(per_sample.mean(0) - exact) / standard_error)) < 4.5
    static = lattice.exact_inner_stress(STRETCH, 1e-9)
    thermal = float(jnp.linalg.norm(exact - static) / jnp.linalg.norm(exact))
    assert 0.3 < thermal < 3  # the fluctuations matter: the stress tests the sampled covariance
    clamped = lattice.exact_inner_stress(STRETCH, temperature, lattice.clamped_covariance(STRETCH, temperature))
    assert float(jnp.linalg.norm(clamped - exact) / jnp.linalg.norm(exact)) > 0.05
    pairs, vectors = lattice.bonds
    sites, _ = lattice.reference
    for index in range(3):
        x = lattice.positions(inner[index], outer[index], STRETCH)
        periodic = stress.periodic_stress(lattice.energy, x, STRETCH, temperature,
                                          lattice.n_atoms * lattice.atom_volume)
        bond = x[pairs[:, 1]] - x[pairs[:, 0]] + (vectors - (sites[pairs[:, 1]] - sites[pairs[:, 0]])) @ STRETCH.T
        by_bonds = stress.bond_stress(lattice.pair_derivative, bond, STRETCH, temperature, coordination=6,
                                      atom_volume=lattice.atom_volume)
        np.testing.assert_allclose(periodic, by_bonds, rtol=1e-10, atol=1e-14)


def test_pair_score_is_permutation_equivariant_and_checkpoints_reload(tmp_path, lattice):
    from dmdjax.sbsam.model import PairScore, ScoreMLP
    from dmdjax.sbsam.train import load_checkpoint, save_checkpoint

    sites = lattice.reference[0][lattice.inner] - 0.5 * lattice.reference[1].sum(0)
    model = PairScore(sites=tuple(map(tuple, sites.tolist())), hidden=(16,), pair_hidden=(16,))
    x = jax.random.normal(jax.random.PRNGKey(0), (lattice.n_inner, 2))
    params = model.init(jax.random.PRNGKey(1), x.reshape(-1), STRETCH, 300.0)
    params = jax.tree_util.tree_map(lambda a: a + 0.3 * jax.random.normal(jax.random.PRNGKey(2), a.shape), params)
    order = np.array([3, 0, 6, 1, 5, 2, 4])
    relabelled = PairScore(sites=tuple(model.sites[i] for i in order), hidden=(16,), pair_hidden=(16,))
    out = model.apply(params, x.reshape(-1), STRETCH, 300.0).reshape(-1, 2)
    out_relabelled = relabelled.apply(params, x[order].reshape(-1), STRETCH, 300.0).reshape(-1, 2)
    np.testing.assert_allclose(out_relabelled, out[order], rtol=1e-12, atol=1e-12)
    flat = ScoreMLP(size=SIZE, hidden=(8,))  # the MLP baseline is not equivariant
    flat_params = jax.tree_util.tree_map(lambda a: a + 0.3, flat.init(jax.random.PRNGKey(1), x.reshape(-1), STRETCH,
                                                                      300.0))
    assert not np.allclose(flat.apply(flat_params, x[order].reshape(-1), STRETCH, 300.0).reshape(-1, 2),
                           flat.apply(flat_params, x.reshape(-1), STRETCH, 300.0).reshape(-1, 2)[order])
    for net, weights in ((model, params), (flat, flat_params)):
        save_checkpoint(tmp_path / "model.msgpack", net, weights, {"loss": "force"})
        loaded, loaded_params, metadata = load_checkpoint(tmp_path / "model.msgpack")
        assert loaded == net and metadata == {"loss": "force"}
        np.testing.assert_array_equal(loaded.apply(loaded_params, x.reshape(-1), STRETCH, 300.0),
                                      net.apply(weights, x.reshape(-1), STRETCH, 300.0))
    (tmp_path / "bad.msgpack").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not an SB-SAM checkpoint"):
        load_checkpoint(tmp_path / "bad.msgpack")


def test_denoising_model_carries_the_noise_free_precision():
    """With noise σ the linear part is the σ-smoothed Gaussian's score, −(A⁻¹ + σ²I)⁻¹x, while σ = 0
    gives −Ax: the same L serves both."""
    from dmdjax.sbsam.model import gaussian_score

    lower = jnp.tril(jax.random.normal(jax.random.PRNGKey(0), (5, 5))) + 3 * jnp.eye(5)
    x = jax.random.normal(jax.random.PRNGKey(1), (5,))
    precision = lower @ lower.T
    np.testing.assert_allclose(gaussian_score(lower, x, 0.0), -precision @ x, rtol=1e-12)
    smoothed = jnp.linalg.inv(jnp.linalg.inv(precision) + 0.3**2 * jnp.eye(5))
    np.testing.assert_allclose(gaussian_score(lower, x, 0.3), -smoothed @ x, rtol=1e-10)


def test_zero_variance_controls_have_mean_zero_and_remove_quadratic_noise():
    """Stein's identity: for exact samples of N(0, A⁻¹) with their score −Ax, a quadratic
    observable xᵀBx + c·x has zero variance with the quadratic controls (the mean is tr(BA⁻¹)
    to round-off, the standard error ~0); with the linear controls alone only the linear part goes,
    and the estimate is within its standard error of tr(BA⁻¹)."""
    from dmdjax.sbsam import stress

    rng = np.random.default_rng(3)
    size, chains, per_chain = 4, 20, 500
    factor = rng.normal(size=(size, size))
    precision = factor @ factor.T + size * np.eye(size)
    covariance = np.linalg.inv(precision)
    x = rng.multivariate_normal(np.zeros(size), covariance, chains * per_chain)
    scores = -x @ precision
    quadratic_form, linear = rng.normal(size=(size, size)), rng.normal(size=size)
    values = np.stack([np.einsum("ni,ij,nj->n", x, quadratic_form, x) + x @ linear, x[:, 0] ** 2], axis=1)
    exact = np.array([np.trace(quadratic_form @ covariance), covariance[0, 0]])
    mean, error = stress.zero_variance_mean(values, scores, chains, positions=x)
    np.testing.assert_allclose(mean, exact, rtol=1e-9)
    assert np.all(error < 1e-9 * np.abs(exact))
    plain_mean, plain_error = stress.zero_variance_mean(values, scores, chains)
    assert np.all(np.abs(plain_mean - exact) < 4.5 * plain_error) and np.all(plain_error > 1e-4 * np.abs(exact))
    with pytest.raises(ValueError, match="positions must have the shape"):
        stress.zero_variance_mean(values, scores, chains, positions=x[:, :2])


def test_symmetrised_score_mlp_is_equivariant_as_the_exact_score(lattice):
    """The exact marginal score obeys S(M_g u | gFgᵀ) = M_g S(u | F) for the region's four mirror
    symmetries; so does ScoreMLP averaged over them (with random weights, with and without σ),
    while the plain network, with the same parameters, does not."""
    from dmdjax.sbsam.model import ScoreMLP, symmetry_actions

    symmetries = lattice.inner_symmetries
    assert len(symmetries) == 4
    u = lattice.sample(jax.random.PRNGKey(2), STRETCH, 400.0, 1)[0][0].reshape(-1)
    size = u.shape[0]
    models = [ScoreMLP(size=size, hidden=(16,), symmetries=group) for group in ((), symmetries)]
    perturb = lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(1), p.shape)
    parameters = {extra: jax.tree_util.tree_map(perturb, models[0].init(jax.random.PRNGKey(0), jnp.zeros(size),
                                                                        jnp.eye(2), 300.0, *extra))
                  for extra in ((), (0.5,))}  # a plain and a denoising (σ-conditioned) model
    raw_gap = 0.0
    for (matrix, _), action in zip(symmetries[1:], symmetry_actions(symmetries, u.dtype)[1:]):
        g = jnp.asarray(matrix)
        image_f = g @ STRETCH @ g.T
        exact = lattice.score(action @ u, image_f, 400.0)
        np.testing.assert_allclose(exact, action @ lattice.score(u, STRETCH, 400.0), rtol=1e-10, atol=1e-12)
        for extra, params in parameters.items():
            images = [model.apply(params, action @ u, image_f, 400.0, *extra) for model in models]
            direct = [action @ model.apply(params, u, STRETCH, 400.0, *extra) for model in models]
            np.testing.assert_allclose(images[1], direct[1], atol=1e-12)
            raw_gap = max(raw_gap, float(jnp.max(jnp.abs(images[0] - direct[0]))))
    assert raw_gap > 1e-3


def test_gaussian_score_mlp_is_a_gradient_field():
    """correction=False: S(x) = −A x with A symmetric positive definite (a Jacobian equal to its
    transpose: the score of a density), for any weights; with the correction MLP it is not."""
    from dmdjax.sbsam.model import ScoreMLP

    x = jax.random.normal(jax.random.PRNGKey(3), (SIZE,))
    for correction in (False, True):
        model = ScoreMLP(size=SIZE, hidden=(8,), correction=correction)
        params = model.init(jax.random.PRNGKey(0), jnp.zeros(SIZE), jnp.eye(2), 300.0)
        params = jax.tree_util.tree_map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
        jacobian = jax.jacfwd(lambda v: model.apply(params, v, STRETCH, 450.0))(x)
        asymmetry = float(jnp.max(jnp.abs(jacobian - jacobian.T)))
        if correction:
            assert asymmetry > 1e-3
        else:
            assert asymmetry < 1e-12
            np.testing.assert_allclose(model.apply(params, x, STRETCH, 450.0), jacobian @ x, atol=1e-12)
            assert float(jnp.min(jnp.linalg.eigvalsh(-jacobian))) > 0
