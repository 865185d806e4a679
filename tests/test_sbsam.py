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


def test_langevin_with_the_exact_score_samples_the_inner_marginal(lattice):
    """The inner region alone, driven by the oracle's score, samples the discretised chain's exact
    stationary law: for precision A and step h, covariance (A − hA²/2)⁻¹ (→ A⁻¹ as h → 0); an
    unstable score is a reported failure, with every sample kept."""
    from dmdjax.sbsam import sample

    temperature = 300.0
    beta = 1.0 / (BOLTZMANN_EV_PER_K * temperature)
    precision = beta * lattice.inner_stiffness(STRETCH)
    step = 0.5 / float(jnp.max(jnp.linalg.eigvalsh(precision)))
    initial = jnp.zeros((256, lattice.n_inner, 2))
    result = sample.langevin(lambda u: lattice.score(u, STRETCH, temperature), jax.random.PRNGKey(5), initial,
                             step=step, n_steps=4000, burn_in=3000, thin=10)
    assert result.samples.shape == (256, 400, lattice.n_inner, 2) and not bool(jnp.any(result.diverged))
    x = result.samples.reshape(-1, SIZE)
    covariance = x.T @ x / x.shape[0]
    discretised = jnp.linalg.inv(precision - 0.5 * step * precision @ precision)
    assert float(jnp.linalg.norm(covariance - discretised) / jnp.linalg.norm(discretised)) < 0.025  # 1.6 % seen
    with pytest.raises(sample.SamplerDivergence, match="diverged") as failure:
        sample.langevin(lambda u: -lattice.score(u, STRETCH, temperature), jax.random.PRNGKey(6), initial,
                        step=step, n_steps=2000)
    assert failure.value.result.samples.shape[0] == 256  # nothing thrown away
