"""No silent wrong answers (issue 30, items 1-5): the concentration convention of files, stale
and short neighbour lists, Newton at a saddle, coincident atoms. Each test fails on 4071519."""

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_alloy

import dmdjax as dj
from dmdjax import cli, dmd
from dmdjax.studies.alloy import SPECIES, write_frames


def _cluster(mendelev, repeats=(2, 2, 2), seed=3):
    """A free fcc Al-Mg cluster with random concentrations (its surface relaxes far)."""
    atoms = random_alloy(repeats=repeats, noise=0.0, fraction=0.0, seed=seed, pbc=False)
    system = dj.from_ase(atoms, species_names=mendelev.species)
    rng = np.random.default_rng(seed)
    s = jnp.asarray(rng.uniform(-0.8, 0.8, system.n_atoms))
    return system, s


def _complete_list(system, mendelev):
    """Every pair of a small cluster: a list that cannot be stale."""
    return dj.neighbor_list(system.positions, system.cell, mendelev.cutoff, skin=30.0)


# 1. One concentration convention: c_<species> columns, legacy 'c' only with its species named.

@pytest.mark.slow
def test_a_frame_fed_back_gives_its_own_free_energy(tmp_path, capsys, mendelev):
    atoms = random_alloy(repeats=(5, 5, 5), noise=0.02, fraction=0.0, seed=5)
    system = dj.from_ase(atoms, species_names=mendelev.species)
    rng = np.random.default_rng(5)
    s = jnp.asarray(rng.uniform(0.2, 0.98, system.n_atoms))  # mostly Al: s = +1 is Al
    vg = dj.VGFreeEnergy(mendelev, system.cell, 600.0, system.n_atoms, species=SPECIES)
    nbrs = dj.neighbor_list(system.positions, system.cell, mendelev.cutoff)
    relaxed = dj.relax(vg, vg.initial_state(system.positions, s, nbrs), nbrs)
    trajectory = dmd.Trajectory(jnp.zeros(1), jax.tree_util.tree_map(lambda a: a[None], relaxed.state),
                                relaxed.free_energy[None], {})
    path = tmp_path / "frames.extxyz"
    write_frames(path, vg, system, trajectory, relaxed.neighbors, 1.0)
    frame = ase.io.read(path)
    assert "c" not in frame.arrays and set(frame.arrays) >= {"c_Al", "c_Mg"}
    assert cli.main(["energy", str(path), "--potential", "AlMg_Mendelev2009", "--temperature", "600",
                     "--json"]) == 0
    import json

    result = json.loads(capsys.readouterr().out)
    own = frame.info["total_free_energy"]
    assert result["free_energy"] == pytest.approx(own, rel=1e-7)  # extxyz keeps 8 digits of X and k
    # The legacy column: refused unless the frame names its species; then read by that name.
    legacy = frame.copy()
    legacy.new_array("c", legacy.arrays.pop("c_Mg"))
    del legacy.arrays["c_Al"]
    ase.io.write(tmp_path / "legacy.extxyz", legacy, format="extxyz")
    assert cli.main(["energy", str(tmp_path / "legacy.extxyz"), "--potential", "AlMg_Mendelev2009",
                     "--temperature", "600", "--json"]) == 2
    assert "does not say which species" in capsys.readouterr().err
    legacy.info["c_species"] = "Mg"
    ase.io.write(tmp_path / "named.extxyz", legacy, format="extxyz")
    assert cli.main(["energy", str(tmp_path / "named.extxyz"), "--potential", "AlMg_Mendelev2009",
                     "--temperature", "600", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["free_energy"] == pytest.approx(own, rel=1e-7)


def test_ambiguous_concentrations_are_refused(mendelev):
    atoms = random_alloy(repeats=(1, 1, 1), fraction=0.0)
    c = np.full(len(atoms), 0.25)
    for arrays, message in (({"c": c, "c_Mg": c}, "ambiguous"), ({"c_Cu": c}, r"species \['Cu'\]"),
                            ({"c_Al": c, "c_Mg": c}, "must be 1 on every atom"),
                            ({"c_Mg": c + 1.0}, r"in \[0, 1\]")):
        trial = atoms.copy()
        for name, values in arrays.items():
            trial.new_array(name, values)
        with pytest.raises(ValueError, match=message):
            dj.io.read_concentrations(trial, mendelev.species)
    trial = atoms.copy()
    trial.new_array("c_Mg", c)
    concentration, species = dj.io.read_concentrations(trial, mendelev.species)
    assert species == ("Al", "Mg") and np.allclose(concentration, 0.75)


# 2. Stale neighbour lists: relax and dmd.run never return a number from one.

@pytest.mark.slow
def test_relax_of_a_free_cluster_is_not_computed_from_a_stale_list(mendelev):
    system, s = _cluster(mendelev)
    vg = dj.VGFreeEnergy(mendelev, system.cell, 600.0, system.n_atoms)
    nbrs = dj.neighbor_list(system.positions, system.cell, mendelev.cutoff, skin=0.5)
    result = dj.relax(vg, vg.initial_state(system.positions, s, nbrs), nbrs)
    moved = float(jnp.max(jnp.linalg.norm(result.positions - system.positions, axis=1)))
    assert moved > 0.25  # beyond what the 0.5 Å skin allows: the list had to be rebuilt
    complete = _complete_list(system, mendelev)
    exact = float(vg(result.state, complete))
    assert float(result.free_energy) == pytest.approx(exact, abs=1e-9)
    assert float(vg.neighbor_fault(result.state, result.neighbors)) <= 0
    # Evaluating with the original (stale) list is refused, not answered.
    with pytest.raises(ValueError, match="stale neighbour list"):
        vg(result.state, nbrs)
    # Inside jit no list can be rebuilt: the stale result is reported as not converged.
    jitted = jax.jit(lambda x, k: dj.relax(vg, dj.DMDState(x, k, s), nbrs, throw=False))(system.positions,
                                                                                    result.stiffness)
    assert not bool(jitted.converged)


@pytest.mark.slow
def test_a_dmd_run_on_a_free_cluster_matches_a_complete_list(mendelev):
    system, s = _cluster(mendelev)
    vg = dj.VGFreeEnergy(mendelev, system.cell, 600.0, system.n_atoms)
    nbrs = dj.neighbor_list(system.positions, system.cell, mendelev.cutoff, skin=0.5)
    law = dmd.MasterEquation(1.0, 0.0)
    trajectory = dmd.run(vg, vg.initial_state(system.positions, s, nbrs), nbrs, law, [0.0, 0.5, 2.0], kinetic_cutoff=3.5,
                         relax_at="interval", rtol=1e-6, atol=1e-8)
    assert trajectory.neighbor_builds  # the run rebuilt its list
    complete = _complete_list(system, mendelev)
    for index in range(trajectory.time.shape[0]):
        exact = vg(trajectory.state[index], complete)
        assert float(trajectory.free_energy[index]) == pytest.approx(float(exact), abs=1e-9)


# 3. The VG interaction range includes the Gaussians' reach: F does not depend on the skin.

@pytest.mark.slow
def test_free_energy_does_not_depend_on_the_skin(mendelev):
    atoms = random_alloy(repeats=(5, 5, 5), noise=0.05, fraction=0.0, seed=7)
    system = dj.from_ase(atoms, species_names=mendelev.species)
    n = system.n_atoms
    s = jnp.full(n, 0.9)
    vg = dj.VGFreeEnergy(mendelev, system.cell, 600.0, n)
    plain = dj.neighbor_list(system.positions, system.cell, mendelev.cutoff, skin=0.5)
    k = jnp.full(n, 2.0)  # soft: σ_ij = 0.23 Å, the 8-node rule reaches 0.94 Å past the cut-off
    assert float(vg.reach(k)) == pytest.approx(4.14454 * np.sqrt(2 / (vg.beta * 2.0)), rel=1e-4)
    with pytest.raises(ValueError, match="Gaussians' reach"):
        vg(dj.DMDState(system.positions, k, s), plain)
    values = [float(vg(dj.DMDState(system.positions, k, s), vg.neighbor_list(system.positions, k, skin=skin)))
              for skin in (0.5, 1.0, 2.0)]
    assert max(values) - min(values) <= 1e-11 * abs(values[0])


# 4. Newton stops at a minimum, not a saddle, and its Hessian is built in bounded blocks.

@pytest.mark.slow
def test_newton_does_not_stop_at_a_saddle():
    """A collinear Lennard-Jones trimer is stationary by symmetry (L-BFGS from a collinear start
    stays on the line) but bending lowers F: a saddle. Newton started there must leave it for
    the bent minimum; before the safeguard it stopped at once and reported convergence."""
    lj = dj.LennardJones(1.0, 1.0, cutoff=3.0)
    cell = dj.make_cell(None, False, dim=3)
    line = jnp.array([[0.0, 0.0, 0.0], [1.12, 0.0, 0.0], [2.24, 0.0, 0.0]])
    nbrs = dj.neighbor_list(line, cell, lj.cutoff, skin=3.0)
    vg = dj.VGFreeEnergy(lj, cell, 100.0, 3)
    s = jnp.zeros(3)
    saddle = dj.relax(vg, vg.initial_state(line, s, nbrs), nbrs, tolerance=1e-10)
    np.testing.assert_allclose(np.asarray(saddle.positions)[:, 1:], 0.0, atol=1e-12)  # still collinear

    def curvature(result):
        z = jnp.concatenate([result.positions, jnp.log(result.stiffness)[:, None]], axis=1)
        objective = lambda z: vg(dj.DMDState(z[:, :3], jnp.exp(z[:, 3]), s), result.neighbors)
        return np.linalg.eigvalsh(np.asarray(jax.hessian(objective)(z).reshape(z.size, z.size)))

    assert curvature(saddle)[0] < -0.1  # bending
    newton = dj.relax(vg, saddle.state, saddle.neighbors, method="newton", tolerance=1e-10)
    assert bool(newton.converged) and float(newton.gradient_norm) <= 1e-10
    assert float(newton.free_energy) < float(saddle.free_energy) - 0.1
    assert curvature(newton)[0] > -1e-6  # a minimum (rigid motions are zero modes)


@pytest.mark.slow
def test_newton_hessian_memory_is_bounded(mendelev):
    """A free 108-atom EAM cluster: every atom a colour, 432 Hessian-vector products. All at once
    they needed 6.6 GB of temporaries (7.7 GB inside dmd.run); in blocks of 32, 0.57 GB."""
    from dmdjax.relax import dense_hessian, hessian_colouring

    system, s = _cluster(mendelev, repeats=(3, 3, 3), seed=0)
    vg = dj.VGFreeEnergy(mendelev, system.cell, 600.0, system.n_atoms)
    nbrs = dj.neighbor_list(system.positions, system.cell, mendelev.cutoff, skin=0.5)
    colouring = hessian_colouring(vg, nbrs)
    assert colouring.n_colours == system.n_atoms == 108
    z = jnp.concatenate([system.positions, jnp.full((system.n_atoms, 1), 1.5)], axis=1)
    gradient = jax.grad(lambda z: vg(dj.DMDState(z[:, :3], jnp.exp(z[:, 3]), s), nbrs))
    compiled = jax.jit(lambda z: dense_hessian(gradient, z, colouring)).lower(z).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < 1.5e9


# 5. Coincident atoms are named at the public boundary.

def test_coincident_atoms_are_refused(tmp_path, capsys, mendelev):
    atoms = random_alloy(repeats=(4, 4, 4), noise=0.0, fraction=0.1, seed=2)
    atoms.positions[7] = atoms.positions[11]
    path = tmp_path / "overlap.xyz"
    ase.io.write(path, atoms)
    for extra in ([], ["--temperature", "600"]):
        code = cli.main(["energy", str(path), "--potential", "AlMg_Mendelev2009", *extra])
        out, err = capsys.readouterr()
        assert code == 2 and out == ""
        assert "atoms 7 and 11 are 0 Å apart" in err and "stiffness" not in err
    with pytest.raises(ValueError, match="atoms 7 and 11"):
        dj.evaluate(mendelev, dj.from_ase(atoms, species_names=mendelev.species))
