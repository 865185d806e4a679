"""EAM energies, forces and stress against ASE's EAM calculator and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.calculators.eam import EAM as AseEAM
from conftest import DATA, random_alloy

import dmdjax as dj


def _ase_results(atoms, path, form):
    atoms = atoms.copy()
    atoms.calc = AseEAM(potential=path, form=form)
    stress = atoms.get_stress() if all(atoms.pbc) else None
    return atoms.get_potential_energy(), atoms.get_forces(), stress


def _compare(atoms, potential, path, form):
    energy, forces, stress = _ase_results(atoms, path, form)
    result = dj.evaluate(potential, dj.from_ase(atoms, species_names=potential.species))
    assert abs(float(result.energy) - energy) <= 1e-6 * abs(energy)
    np.testing.assert_allclose(np.asarray(result.forces), forces, rtol=0, atol=1e-4)
    if stress is not None:
        np.testing.assert_allclose(np.asarray(result.stress), stress, rtol=0, atol=1e-6)
    return result


def test_mendelev_fs_matches_ase_periodic(mendelev, mendelev_path):
    atoms = random_alloy(repeats=(4, 4, 4), noise=0.1, fraction=0.3, seed=1)
    assert len(atoms) >= 100 and 0 < atoms.get_chemical_symbols().count("Mg") < len(atoms)
    result = _compare(atoms, mendelev, mendelev_path, "fs")
    assert result.stress is not None


def test_setfl_alloy_matches_ase():
    path = str(DATA / "MgAl_LiuAdams.eam.alloy")
    potential = dj.load_eam(path)
    assert potential.species == ("Mg", "Al") and potential.form == "alloy"
    atoms = random_alloy(repeats=(4, 4, 4), noise=0.08, fraction=0.5, seed=2)
    _compare(atoms, potential, path, "alloy")


def _write_funcfl(path, nr=2000, dr=3e-3, nrho=2000, drho=5e-3, cutoff=5.9):
    """A single-element DYNAMO funcfl file with smooth analytic tables (Johnson-like)."""
    r = np.arange(nr) * dr
    rho = np.arange(nrho) * drho
    taper = np.clip((cutoff - r) / cutoff, 0.0, None) ** 4
    embedding = -np.sqrt(rho + 1e-3) + 0.1 * rho
    charge = 1.2 * np.exp(-1.1 * (r - 2.86)) * taper  # effective charge Z(r) >= 0
    density = np.exp(-1.4 * (r - 2.86)) * taper
    with open(path, "w") as fh:
        fh.write("funcfl test file\n13 26.98 4.05 fcc\n")
        fh.write(f"{nrho} {drho:.10e} {nr} {dr:.10e} {cutoff:.10e}\n")
        for table in (embedding, charge, density):
            np.savetxt(fh, table.reshape(-1, 5), fmt="%.16e")


def test_funcfl_eam_matches_ase(tmp_path):
    path = tmp_path / "Al.eam"
    _write_funcfl(path)
    potential = dj.load_eam(path)
    assert potential.species == ("Al",) and potential.form == "eam"
    atoms = random_alloy(repeats=(4, 4, 4), noise=0.1, fraction=0.0, seed=3)
    _compare(atoms, potential, str(path), "eam")


@pytest.mark.parametrize("pbc", [(True, True, False), (False, False, False)])
def test_mixed_and_free_boundaries_match_ase(mendelev, mendelev_path, pbc):
    atoms = random_alloy(repeats=(4, 4, 3), noise=0.05, fraction=0.2, seed=4, pbc=pbc)
    _compare(atoms, mendelev, mendelev_path, "fs")


def test_forces_and_stress_match_finite_differences(mendelev):
    atoms = random_alloy(repeats=(4, 4, 4), noise=0.1, fraction=0.3, seed=5)
    system = dj.from_ase(atoms, species_names=mendelev.species)
    nbrs = dj.neighbor_list(system.positions, system.cell, mendelev.cutoff, skin=0.5)
    energy = jax.jit(lambda x, cell: dj.potential_energy(mendelev, x, system.species, cell, nbrs))
    forces = np.asarray(dj.forces(mendelev, system.positions, system.species, system.cell, nbrs))
    h = 1e-5
    rng = np.random.default_rng(0)
    for i in rng.choice(system.n_atoms, 5, replace=False):
        for d in range(3):
            plus = system.positions.at[i, d].add(h)
            minus = system.positions.at[i, d].add(-h)
            fd = -(energy(plus, system.cell) - energy(minus, system.cell)) / (2 * h)
            assert abs(fd - forces[i, d]) < 1e-6, (i, d, fd, forces[i, d])
    # Stress: central differences of E under the deformation x -> (I + eps) x of atoms and cell.
    stress = np.asarray(dj.stress(mendelev, system.positions, system.species, system.cell, nbrs))
    volume = float(system.cell.volume())
    for a, b in [(0, 0), (1, 2), (0, 1)]:
        eps = np.zeros((3, 3))
        eps[a, b] = eps[b, a] = h / (2 if a != b else 1)

        def strained(sign):
            deformation = np.eye(3) + sign * eps
            cell = dj.make_cell(np.asarray(system.cell.vectors) @ deformation.T, True)
            return energy(system.positions @ deformation.T, cell)

        fd = (strained(1) - strained(-1)) / (2 * h * volume)
        assert abs(fd - stress[a, b]) < 1e-8, (a, b, fd, stress[a, b])


def test_float32_holds(mendelev):
    atoms = random_alloy(repeats=(4, 4, 4), noise=0.1, fraction=0.3, seed=6)
    system64 = dj.from_ase(atoms, species_names=mendelev.species)
    system32 = dj.System(system64.positions.astype(jnp.float32), system64.species, system64.cell,
                         system64.pinned, system64.species_names)
    r64 = dj.evaluate(mendelev, system64)
    r32 = dj.evaluate(mendelev, system32)
    assert r32.energy.dtype == jnp.float32 and r32.forces.dtype == jnp.float32
    assert abs(float(r32.energy) - float(r64.energy)) < 1e-5 * abs(float(r64.energy))
    assert np.abs(np.asarray(r32.forces) - np.asarray(r64.forces)).max() < 2e-3


def test_vmap_over_configurations(mendelev):
    atoms = random_alloy(repeats=(4, 4, 4), noise=0.02, fraction=0.3, seed=7)
    system = dj.from_ase(atoms, species_names=mendelev.species)
    nbrs = dj.neighbor_list(system.positions, system.cell, mendelev.cutoff, skin=0.5)
    rng = np.random.default_rng(1)
    batch = system.positions[None] + rng.normal(0, 0.03, (3,) + system.positions.shape)
    batched = jax.jit(jax.vmap(lambda x: dj.potential_energy(mendelev, x, system.species, system.cell, nbrs)))(batch)
    single = [float(dj.potential_energy(mendelev, x, system.species, system.cell, nbrs)) for x in batch]
    np.testing.assert_allclose(np.asarray(batched), single, rtol=1e-12)


def test_bundled_potential_and_citation():
    from importlib import resources

    citation = (resources.files("dmdjax.potentials") / "data" / "CITATION.md").read_text()
    assert "Mendelev" in citation and "3269" in citation
    potential = dj.load_eam("AlMg_Mendelev2009")
    assert potential.species == ("Al", "Mg") and potential.cutoff == pytest.approx(7.5)
