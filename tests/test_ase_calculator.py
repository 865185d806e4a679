"""dmdjax in ASE: small periodic cells (replicated and folded), EAMCalculator and
FreeEnergyCalculator against ASE's EAM and ASE's own finite differences, cell relaxation at
temperature."""

import json

import ase.build
import ase.io
import numpy as np
import pytest
from ase.calculators.eam import EAM as AseEAM
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS
from conftest import random_alloy

import dmdjax as dj
from dmdjax import cli
from dmdjax.ase import EAMCalculator, FreeEnergyCalculator

GPA_PER_EV_A3 = 160.21766208


def _small_cells():
    four = ase.build.bulk("Al", "fcc", a=4.05, cubic=True)
    four.symbols[1] = "Mg"
    rattled = random_alloy(repeats=(2, 2, 2), noise=0.1, fraction=0.3, seed=3)
    primitive = ase.build.bulk("Al", "fcc", a=4.05)  # one atom, oblique cell
    return {"four": four, "rattled": rattled, "primitive": primitive}


def test_replicate_and_replicas_needed():
    system = dj.from_ase(ase.build.bulk("Al", "fcc", a=4.05, cubic=True))
    assert dj.systems.replicas_needed(system.cell, 8.0) == (4, 4, 4)
    assert dj.systems.replicas_needed(system.cell, 2.0) == (1, 1, 1)
    big = dj.systems.replicate(system, (2, 3, 1))
    np.testing.assert_allclose(np.asarray(big.positions[:4]), np.asarray(system.positions))
    expected = ase.build.bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 3, 1))
    np.testing.assert_allclose(np.asarray(big.cell.vectors), expected.cell[:], atol=1e-12)
    np.testing.assert_allclose(np.sort(np.asarray(big.positions), axis=0), np.sort(expected.positions, axis=0),
                               atol=1e-12)
    slab = dj.from_ase(ase.build.fcc100("Al", (2, 2, 3), vacuum=5.0, periodic=False))
    with pytest.raises(ValueError, match="free cell vector"):
        dj.systems.replicate(slab, (1, 1, 2))
    with pytest.raises(ValueError, match="repeats"):
        dj.systems.replicate(system, (0, 1, 1))


@pytest.mark.parametrize("name", ["four", "rattled", "primitive"])
def test_small_cells_match_ase_eam(name, mendelev_path, tmp_path, capsys):
    """`dmdjax energy` on cells narrower than twice the cut-off equals ASE's EAM."""
    path = tmp_path / "cell.xyz"
    ase.io.write(path, _small_cells()[name])
    reference = ase.io.read(path)  # the file's rounded positions
    reference.calc = AseEAM(potential=mendelev_path, form="fs")
    assert cli.main(["energy", str(path), "--potential", "AlMg_Mendelev2009", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    energy = reference.get_potential_energy()
    assert abs(data["energy"] - energy) <= 1e-10 * abs(energy)
    np.testing.assert_allclose(data["forces"], reference.get_forces(), rtol=0, atol=1e-8)
    np.testing.assert_allclose(data["stress"], reference.get_stress(), rtol=0, atol=1e-10)


def test_eam_calculator_passes_ase_finite_differences():
    atoms = _small_cells()["rattled"]
    atoms.calc = EAMCalculator("AlMg_Mendelev2009")
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert atoms.get_potential_energies().sum() == pytest.approx(atoms.get_potential_energy(), rel=1e-12)
    np.testing.assert_allclose(forces, calculate_numerical_forces(atoms, 1e-4), rtol=0, atol=1e-6)
    np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, 1e-5), rtol=0, atol=1e-6)


def _strained_alloy():
    atoms = ase.build.bulk("Al", "fcc", a=4.05, cubic=True)
    atoms.symbols[1] = "Mg"
    atoms.rattle(0.05, seed=1)
    atoms.set_cell(atoms.cell[:] @ np.array([[1.01, 0.004, 0.0], [0.004, 0.995, 0.0], [0.0, 0.0, 1.0]]),
                   scale_atoms=True)
    return atoms


@pytest.mark.slow
def test_free_energy_calculator_passes_ase_finite_differences():
    atoms = _strained_alloy()
    atoms.calc = FreeEnergyCalculator("AlMg_Mendelev2009", 600.0, tolerance=1e-10, reach=1.0)
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert np.abs(forces).max() > 0.1 and np.abs(stress).max() > 1e-3  # a state with something to check
    np.testing.assert_allclose(forces, calculate_numerical_forces(atoms, 1e-4), rtol=0, atol=1e-5)
    np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, 1e-5), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_free_energy_of_a_small_cell_equals_its_supercell(mendelev):
    """F per atom of the 4-atom cell (replicated inside) equals that of the 256-atom cell, and
    that of the explicit VGFreeEnergy on a 864-atom cell."""
    four = ase.build.bulk("Al", "fcc", a=4.05, cubic=True)
    four.symbols[1] = "Mg"
    per_atom = []
    for atoms in (four, four.repeat((4, 4, 4))):
        atoms.calc = FreeEnergyCalculator(mendelev, 600.0, tolerance=1e-9, reach=1.0)
        per_atom.append(atoms.get_potential_energy() / len(atoms))
    big = dj.from_ase(four.repeat((6, 6, 6)), species_names=mendelev.species)
    vg = dj.VGFreeEnergy(mendelev, big.cell, 600.0, big.n_atoms, pinned_species=np.ones(big.n_atoms, bool))
    s = np.where(np.asarray(big.species) == 0, 1.0, -1.0)
    neighbors = vg.neighbor_list(big.positions, skin=0.5)
    state = vg.initial_state(big.positions, s, neighbors)
    relaxed = dj.relax_stiffness(vg, state, neighbors, tolerance=1e-9)
    per_atom.append(float(relaxed.free_energy) / big.n_atoms)
    np.testing.assert_allclose(per_atom[1:], per_atom[0], rtol=1e-10, atol=0)


def test_cell_relaxation_at_600_k_reaches_zero_free_energy_pressure():
    atoms = ase.build.bulk("Al", "fcc", a=4.05, cubic=True)
    atoms.calc = FreeEnergyCalculator("AlMg_Mendelev2009", 600.0, tolerance=1e-10, reach=1.0)
    BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-7, steps=100)
    stress_gpa = atoms.get_stress() * GPA_PER_EV_A3
    assert np.abs(stress_gpa).max() < 1e-4
    a = atoms.cell.lengths()[0]
    # Thermal expansion from 0 K (Mendelev's Al, ~4.045 Å there): a few 10⁻² Å at 600 K.
    cold = ase.build.bulk("Al", "fcc", a=4.05, cubic=True)
    cold.calc = EAMCalculator("AlMg_Mendelev2009")
    BFGS(FrechetCellFilter(cold), logfile=None).run(fmax=1e-7, steps=100)
    assert 0.01 < a - cold.cell.lengths()[0] < 0.1


@pytest.mark.slow
def test_relax_cell_equals_the_ase_route(mendelev):
    """dj.relax_cell (one L-BFGS over X, log k and the strain) finds the a(600 K) of ASE's
    FrechetCellFilter on FreeEnergyCalculator (k relaxed at each cell), and zero stress."""
    atoms = ase.build.bulk("Al", "fcc", a=4.05, cubic=True)
    atoms.calc = FreeEnergyCalculator(mendelev, 600.0, tolerance=1e-10, reach=1.0)
    BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-7, steps=100)
    system = dj.systems.fcc(4.05, (5, 5, 5)).with_species_names(mendelev.species)
    n = system.n_atoms
    vg = dj.VGFreeEnergy(mendelev, system.cell, 600.0, n, pinned_species=np.ones(n, bool))
    neighbors = vg.neighbor_list(system.positions, skin=0.5)
    relaxed_vg, result = dj.relax_cell(vg, vg.initial_state(system.positions, np.ones(n), neighbors), neighbors)
    assert bool(result.converged)
    np.testing.assert_allclose(np.asarray(relaxed_vg.cell.vectors) / 5, np.eye(3) * atoms.cell.lengths()[0],
                               atol=2e-5)
    stress = np.asarray(relaxed_vg.stress(result.state, result.neighbors)) * GPA_PER_EV_A3
    assert np.abs(stress).max() < 1e-3
    with pytest.raises(ValueError, match="pinned"):
        pinned = dj.VGFreeEnergy(mendelev, system.cell, 600.0, n, pinned=np.arange(n) == 0)
        dj.relax_cell(pinned, pinned.initial_state(system.positions, np.full(n, 0.9), neighbors), neighbors)


@pytest.mark.slow
def test_free_energy_calculator_relaxes_s_at_an_exchange_potential(mendelev):
    """With Δμ given, s relaxes to μ_i = ∂F/∂s_i = Δμ on every site (Δμ = −1.045 eV: μ at s = 0.8
    on this cell; from the atoms' species the Mg site stays Mg-rich, a local minimum of the mean field)."""
    atoms = _strained_alloy()
    calc = FreeEnergyCalculator(mendelev, 600.0, exchange_potential=-1.045, tolerance=1e-9, reach=1.0)
    atoms.calc = calc
    atoms.get_potential_energy()
    s = calc.order_parameter
    assert np.all(np.abs(s) < 0.99) and np.ptp(s) > 0.1
    system = dj.from_ase(atoms, species_names=mendelev.species)
    big = dj.systems.replicate(system, dj.systems.replicas_needed(system.cell, mendelev.cutoff + 1.5))
    copies = big.n_atoms // system.n_atoms
    vg = dj.VGFreeEnergy(mendelev, big.cell, 600.0, big.n_atoms)
    neighbors = vg.neighbor_list(big.positions, skin=0.5)
    state = dj.DMDState(big.positions, np.tile(calc._stiffness, copies), np.tile(s, copies))
    mu = np.asarray(vg.chemical_potential(state, neighbors))
    np.testing.assert_allclose(mu, -1.045, rtol=0, atol=1e-6)


def test_calculator_errors():
    with pytest.raises(ValueError, match="temperature"):
        FreeEnergyCalculator("AlMg_Mendelev2009", -5.0)
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.calc = FreeEnergyCalculator("AlMg_Mendelev2009", 300.0)
    with pytest.raises(ValueError, match="Cu"):
        atoms.get_potential_energy()
