"""The dmdjax command: same numbers as the Python API, clear errors."""

import json
import subprocess
import sys

import ase.io
import numpy as np
import pytest
from conftest import random_alloy

import dmdjax as dj
from dmdjax import cli


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_energy_json_matches_api(tmp_path, capsys, mendelev):
    atoms = random_alloy(repeats=(4, 4, 4), noise=0.08, fraction=0.1, seed=11)
    path = tmp_path / "almg.xyz"
    ase.io.write(path, atoms)
    code, out, _ = _run(capsys, "energy", str(path), "--potential", "AlMg_Mendelev2009", "--json")
    assert code == 0
    data = json.loads(out)
    expected = dj.evaluate(mendelev, dj.from_ase(ase.io.read(path), species_names=mendelev.species))
    assert data["energy"] == pytest.approx(float(expected.energy), rel=1e-12)
    np.testing.assert_allclose(data["forces"], np.asarray(expected.forces), atol=1e-10)
    np.testing.assert_allclose(data["stress"], np.asarray(expected.stress), atol=1e-12)
    code, out, _ = _run(capsys, "energy", str(path), "--potential", "AlMg_Mendelev2009")
    assert code == 0 and f"{float(expected.energy):.10f} eV" in out


def test_energy_unknown_species_is_a_clear_error(tmp_path, capsys):
    atoms = random_alloy(repeats=(4, 4, 4), fraction=0.05, solute="Cu", seed=12)
    path = tmp_path / "alcu.xyz"
    ase.io.write(path, atoms)
    code, out, err = _run(capsys, "energy", str(path), "--potential", "AlMg_Mendelev2009")
    assert code == 2 and out == ""
    assert "species ['Cu'] not in the potential's species ['Al', 'Mg']" in err


def test_energy_missing_and_malformed_files(tmp_path, capsys):
    structure = tmp_path / "al.xyz"
    ase.io.write(structure, random_alloy(repeats=(4, 4, 4), fraction=0.0))
    code, _, err = _run(capsys, "energy", str(structure), "--potential", str(tmp_path / "nope.eam.fs"))
    assert code == 2 and "potential file not found" in err and "nope.eam.fs" in err
    bad = tmp_path / "bad.eam.alloy"
    bad.write_text("header\nheader\nheader\n2 Al Mg\n100 0.1 100 0.1 5.0\n13 26.98 4.05 fcc\n1.0 2.0\n")
    code, _, err = _run(capsys, "energy", str(structure), "--potential", str(bad))
    assert code == 2 and "malformed EAM file" in err and "bad.eam.alloy" in err
    code, _, err = _run(capsys, "energy", str(tmp_path / "missing.xyz"), "--potential", "AlMg_Mendelev2009")
    assert code == 2 and "structure file not found" in err


def test_energy_of_a_lammps_data_file(tmp_path, capsys):
    """--format lammps-data (types mapped to the potential's species in order, or --types) gives
    the energy and forces of the same structure in extended XYZ; an unguessable name is a clear error."""
    atoms = random_alloy(repeats=(4, 4, 4), fraction=0.3, seed=5)
    xyz, data = tmp_path / "almg.xyz", tmp_path / "almg.data"
    ase.io.write(xyz, atoms)
    ase.io.write(data, atoms, format="lammps-data", specorder=["Al", "Mg"], atom_style="atomic")
    _, reference, _ = _run(capsys, "energy", str(xyz), "--potential", "AlMg_Mendelev2009", "--json")
    reference = json.loads(reference)
    for extra in ([], ["--atom-style", "atomic", "--types", "Al,Mg"]):
        code, out, _ = _run(capsys, "energy", str(data), "--potential", "AlMg_Mendelev2009", "--json",
                            "--format", "lammps-data", *extra)
        result = json.loads(out)
        # the data file holds positions to ~1e-10 Å (ASE's writer): energies agree to ~1e-10 relative
        assert code == 0 and result["energy"] == pytest.approx(reference["energy"], rel=1e-9)
        np.testing.assert_allclose(result["forces"], reference["forces"], atol=1e-6)
    code, _, err = _run(capsys, "energy", str(data), "--potential", "AlMg_Mendelev2009", "--format", "lammps-data",
                        "--types", "Mg,Al")
    assert code == 0  # swapped types: a different alloy, still read
    code, _, err = _run(capsys, "energy", str(data), "--potential", "AlMg_Mendelev2009")
    assert code == 2 and "name the format with --format" in err  # ASE guesses another format for *.data
    code, _, err = _run(capsys, "energy", str(xyz), "--potential", "AlMg_Mendelev2009", "--types", "Al,Mg")
    assert code == 2 and "for format='lammps-data'" in err


def test_build_then_energy_as_a_subprocess(tmp_path):
    out = tmp_path / "almg.xyz"
    subprocess.run([sys.executable, "-m", "dmdjax.cli", "build", "fcc", "--repeat", "4", "4", "4",
                    "--solute", "Mg:0.06", "-o", str(out)], check=True, capture_output=True)
    atoms = ase.io.read(out)
    assert len(atoms) == 256 and atoms.get_chemical_symbols().count("Mg") == 15
    help_text = subprocess.run([sys.executable, "-m", "dmdjax.cli", "--help"], check=True, capture_output=True,
                               text=True).stdout
    assert "energy" in help_text and "build" in help_text


@pytest.mark.slow
def test_free_energy_json_matches_api(tmp_path, capsys, mendelev):
    import jax.numpy as jnp

    atoms = random_alloy(repeats=(4, 4, 4), noise=0.03, fraction=0.1, seed=13)
    rng = np.random.default_rng(0)
    concentration = np.clip((np.array(atoms.get_chemical_symbols()) == "Al") + rng.normal(0, 0.1, len(atoms)),
                            0.05, 0.95)
    atoms.new_array("c_Al", concentration)
    path = tmp_path / "almg_c.xyz"
    ase.io.write(path, atoms, format="extxyz")
    out_xyz = tmp_path / "relaxed.xyz"
    code, out, _ = _run(capsys, "energy", str(path), "--potential", "AlMg_Mendelev2009", "--temperature", "400",
                        "--relax", "--json", "--output", str(out_xyz))
    assert code == 0
    data = json.loads(out)
    assert data["converged"] and data["iterations"] > 0
    back = ase.io.read(path)
    system = dj.from_ase(back, species_names=mendelev.species)
    s = jnp.asarray(2 * back.arrays["c_Al"] - 1)
    vg = dj.VGFreeEnergy(mendelev, system.cell, 400.0, system.n_atoms)
    nbrs = dj.neighbor_list(system.positions, system.cell, mendelev.cutoff, skin=0.5)
    result = dj.relax(vg, vg.initial_state(system.positions, s, nbrs), nbrs)
    assert data["free_energy"] == pytest.approx(float(result.free_energy), rel=1e-10)
    np.testing.assert_allclose(data["stiffness"], np.asarray(result.stiffness), rtol=1e-6)
    mu = vg.chemical_potential(result.state, result.neighbors)
    np.testing.assert_allclose(data["chemical_potential"], np.asarray(mu), atol=1e-6)
    frame = ase.io.read(out_xyz)
    np.testing.assert_allclose(frame.arrays["k"], data["stiffness"], rtol=1e-8)
    np.testing.assert_allclose(frame.arrays["c_Al"], back.arrays["c_Al"], atol=1e-8)
    # The frame read back is a DMDState with the same free energy.
    _, state, pair = dj.io.read_state(out_xyz, mendelev.species)
    assert isinstance(state, dj.DMDState) and pair == ("Al", "Mg")
    np.testing.assert_allclose(np.asarray(state.stiffness), data["stiffness"], rtol=1e-8)
    assert float(vg(state, vg.covering_neighbors(state, nbrs))) == pytest.approx(data["free_energy"], rel=1e-7)


def test_free_energy_flag_errors(tmp_path, capsys):
    structure = tmp_path / "al.xyz"
    ase.io.write(structure, random_alloy(repeats=(4, 4, 4), fraction=0.0))
    code, _, err = _run(capsys, "energy", str(structure), "--potential", "AlMg_Mendelev2009", "--relax")
    assert code == 2 and "--relax and --output need --temperature" in err
    code, _, err = _run(capsys, "energy", str(structure), "--potential", "AlMg_Mendelev2009", "--temperature", "-3")
    assert code == 2 and "temperature must be finite and > 0 K; got -3.0" in err
