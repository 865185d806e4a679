"""Bad input gets a clear error that names the bad value."""

import jax.numpy as jnp
import numpy as np
import pytest

import dmdjax as dj


def test_unknown_species():
    potential = dj.load_eam("AlMg_Mendelev2009")
    system = dj.make_system(np.zeros((1, 3)), ["Cu"], cell=[20.0] * 3, pbc=True)
    with pytest.raises(ValueError, match=r"species \['Cu'\] not in the potential's species \['Al', 'Mg'\]"):
        dj.evaluate(potential, system)
    with pytest.raises(ValueError, match="species 'Cu' not in the potential's species"):
        potential.species_index("Cu")


def test_missing_pair_entry():
    with pytest.raises(ValueError, match=r"epsilon: missing pair entry \('B', 'B'\)"):
        dj.LennardJones({("A", "A"): 1.0, ("A", "B"): 0.5}, 1.0, species=("A", "B"))
    with pytest.raises(ValueError, match=r"sigma: unknown species 'C'"):
        dj.LennardJones(1.0, {("A", "C"): 1.0}, species=("A", "B"))
    with pytest.raises(ValueError, match="must be symmetric"):
        dj.Morse([[1.0, 0.5], [0.4, 1.0]], species=("A", "B"))


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match=r"temperature must be finite and > 0 K; got -5.0"):
        dj.beta_from_temperature(-5.0)
    with pytest.raises(ValueError, match=r"got 0.0 at index \(1,\)"):
        dj.beta_from_temperature([300.0, 0.0])
    assert dj.beta_from_temperature(300.0) == pytest.approx(1 / (8.617333262e-5 * 300.0))


def test_mismatched_shapes():
    with pytest.raises(ValueError, match=r"species must have shape \(4,\) to match positions \(4, 3\); got \(3,\)"):
        dj.make_system(np.zeros((4, 3)), [0, 1, 0])
    with pytest.raises(ValueError, match="positions must have shape"):
        dj.make_system(np.zeros((4, 5)))
    potential = dj.LennardJones(1.0, 1.0, species=("A", "B"))
    system = dj.make_system(np.random.default_rng(0).random((5, 3)) * 10, [0, 1, 0, 1, 0], cell=[10.0] * 3,
                            pbc=True, species_names=("A", "B"))
    nbrs = dj.neighbor_list(system.positions, system.cell, potential.cutoff)
    with pytest.raises(ValueError, match=r"species weights must have shape \(5, 2\); got \(5, 3\)"):
        dj.potential_energy(potential, system.positions, np.ones((5, 3)) / 3, system.cell, nbrs)
    with pytest.raises(ValueError, match="neighbour list is for 5 atoms but positions have 4"):
        dj.potential_energy(potential, system.positions[:4], system.species[:4], system.cell, nbrs)


def test_non_finite_positions_and_bad_cells():
    with pytest.raises(ValueError, match=r"positions must be finite; got nan at index \(1, 2\)"):
        dj.make_system(np.array([[0.0, 0, 0], [1, 1, np.nan]]))
    with pytest.raises(ValueError, match="periodic system needs `cell`"):
        dj.make_system(np.zeros((2, 3)), pbc=True)
    with pytest.raises(ValueError, match="must be orthogonal to the periodic cell vectors"):
        dj.make_cell([[5.0, 0, 0], [0, 5.0, 0], [1.0, 0, 5.0]], (True, True, False))


def test_missing_and_malformed_potential_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="potential file not found: 'nowhere.eam.alloy'"):
        dj.load_eam("nowhere.eam.alloy")
    bad = tmp_path / "truncated.eam.fs"
    bad.write_text("a\nb\nc\n2 Al Mg\n10 0.1 10 0.1 5.0\n13 26.98 4.05 fcc\n0.0 1.0\n")
    with pytest.raises(ValueError, match="malformed EAM file .*truncated.eam.fs"):
        dj.load_eam(bad)
    odd = tmp_path / "potential.txt"
    odd.write_text("x")
    with pytest.raises(ValueError, match="cannot tell the EAM format"):
        dj.load_eam(odd)


def test_a_dmd_state_is_validated_at_construction():
    """DMDState names a bad shape or value (ValueError) when built from concrete arrays; traced
    inside jit it is not checked; a swapped k and s is caught by their values."""
    import jax

    x = jnp.zeros((4, 3))
    k = jnp.full(4, 3.0)
    s = jnp.array([0.5, -0.2, 1.0, 0.0])  # ±1 allowed here (pinned species); the free energy is stricter
    state = dj.DMDState(x, k, s)
    assert state.n_sites == 4 and state.dtype == x.dtype
    with pytest.raises(ValueError, match=r"stiffness \(4,\).*order_parameter \(3,\)"):
        dj.DMDState(x, k, s[:3])
    with pytest.raises(ValueError, match=r"positions \(4,\)"):
        dj.DMDState(jnp.zeros(4), k, s)
    with pytest.raises(ValueError, match=r"stiffness must be finite and > 0.*got -1.0 at index \(2,\)"):
        dj.DMDState(x, k.at[2].set(-1.0), s)
    with pytest.raises(ValueError, match=r"order_parameter must lie in \[-1, 1\].*got 1.5 at index \(1,\)"):
        dj.DMDState(x, k, s.at[1].set(1.5))
    with pytest.raises(ValueError, match="positions must be finite"):
        dj.DMDState(x.at[0, 0].set(jnp.nan), k, s)
    with pytest.raises(ValueError, match="floating-point"):
        dj.DMDState(x, k, jnp.array([1, 0, 0, 1]))
    with pytest.raises(ValueError):  # k and s swapped: s = 3 is out of [-1, 1] (and k = −0.2 is not > 0)
        dj.DMDState(x, s, k)
    with pytest.raises(ValueError, match="order_parameter"):
        state.replace(order_parameter=jnp.full(4, 2.0))
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), state, state)
    assert stacked[1].positions.shape == (4, 3)
    # Traced: no check (an out-of-range s flows through; jit-safe code uses equinox.error_if).
    assert float(jax.jit(lambda k: dj.DMDState(x, k, s).stiffness.sum())(-k)) == -12.0


def test_the_free_energy_refuses_s_at_one_off_pinned_species():
    lj = dj.LennardJones(1.0, 1.0, cutoff=2.5)
    chain = dj.systems.chain(4, 1.1)
    vg = dj.VGFreeEnergy(lj, chain.cell, 100.0, 4)
    nbrs = vg.neighbor_list(chain.positions)
    state = vg.initial_state(chain.positions, jnp.array([0.5, 1.0, 0.0, 0.0]), nbrs)
    with pytest.raises(ValueError, match="strictly inside"):
        vg(state, nbrs)
    with pytest.raises(TypeError, match="DMDState"):
        vg.check((chain.positions, state.stiffness, state.order_parameter), nbrs)


def test_kinetic_laws_and_parameters_validate_at_construction():
    from dmdjax import dmd

    with pytest.raises(ValueError, match="SpinDiffusion.tau must be finite and > 0"):
        dmd.SpinDiffusion(-1.0)
    with pytest.raises(ValueError, match="variant"):
        dmd.SpinDiffusion(1.0, "approximate")
    with pytest.raises(ValueError, match="GradientFlow.mobility"):
        dmd.GradientFlow(0.0)
    with pytest.raises(ValueError, match="attempt_frequency"):
        dmd.MasterEquation(-2.0, 0.1)
    with pytest.raises(ValueError, match="activation_energy must be finite"):
        dmd.MasterEquation(1.0, float("nan"))
    dmd.GradientFlow(lambda a, b: 1.0 + 0 * a)  # a mobility function is not checked here
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        dj.units.beta_from_temperature(-5.0)
    assert float(dj.units.temperature_from_beta(dj.units.beta_from_temperature(300.0))) == pytest.approx(300.0)
