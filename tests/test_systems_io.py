"""Systems, lattices and files: ASE round trips and atomic writes."""

import ase.io
import numpy as np
import pytest
from conftest import random_alloy

import dmdjax as dj


def test_extxyz_round_trip_keeps_everything(tmp_path):
    atoms = random_alloy(repeats=(3, 3, 3), noise=0.05, fraction=0.25, seed=0, pbc=(True, True, False))
    system = dj.from_ase(atoms, species_names=("Al", "Mg"))
    rng = np.random.default_rng(0)
    c = rng.random(system.n_atoms)
    k = rng.uniform(1, 5, system.n_atoms)
    path = dj.io.write_extxyz(tmp_path / "frame.xyz", system, arrays={"c": c, "k": k}, info={"time": 1.5})
    back = ase.io.read(path)
    np.testing.assert_allclose(back.positions, atoms.positions, atol=1e-8)
    np.testing.assert_allclose(np.asarray(back.cell)[:2], np.asarray(atoms.cell)[:2], atol=1e-8)
    assert tuple(back.pbc) == (True, True, False)
    assert back.get_chemical_symbols() == atoms.get_chemical_symbols()
    np.testing.assert_allclose(back.arrays["c"], c, atol=1e-8)
    np.testing.assert_allclose(back.arrays["k"], k, atol=1e-8)
    assert back.info["time"] == 1.5
    again = dj.from_ase(back, species_names=("Al", "Mg"))
    np.testing.assert_array_equal(np.asarray(again.species), np.asarray(system.species))


def test_generic_species_names_and_pinned_atoms_round_trip(tmp_path):
    system = dj.make_system(np.random.default_rng(1).random((6, 3)) * 5, ["A", "B", "B", "A", "B", "A"],
                            cell=[5.0, 5.0, 5.0], pbc=True, pinned=[0, 3])
    frames = [system, system]
    path = dj.io.write_extxyz(tmp_path / "traj.xyz", frames, info=[{"time": 0.0}, {"time": 1.0}])
    images = ase.io.read(path, index=":")
    assert len(images) == 2 and images[1].info["time"] == 1.0
    assert list(images[0].arrays["species_name"]) == ["A", "B", "B", "A", "B", "A"]
    assert dj.from_ase(images[0]).species_names == ("A", "B")
    # Pinned atoms travel as an ASE FixAtoms constraint in memory.
    atoms = dj.to_ase(system)
    back = dj.from_ase(atoms)
    np.testing.assert_array_equal(np.asarray(back.pinned), [True, False, False, True, False, False])


def test_failed_write_leaves_existing_file_intact(tmp_path):
    system = dj.systems.fcc(4.05, (1, 1, 1))
    path = dj.io.write_extxyz(tmp_path / "keep.xyz", system)
    before = path.read_text()
    with pytest.raises(ValueError, match="per-atom array 'c'"):
        dj.io.write_extxyz(path, system, arrays={"c": np.zeros(3)})
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.xyz"]  # no temporary left behind


def test_lattices():
    fcc = dj.systems.fcc(4.05, (2, 3, 4))
    assert fcc.n_atoms == 4 * 24 and fcc.cell.fully_periodic
    nbrs = dj.neighbor_list(fcc.positions, fcc.cell, 3.0, skin=0.0)
    assert np.all((np.asarray(nbrs.idx) < fcc.n_atoms).sum(1) == 12)  # a/sqrt(2) = 2.86 Å shell
    bcc = dj.systems.bcc(2.87, (3, 3, 3))
    nbrs = dj.neighbor_list(bcc.positions, bcc.cell, 2.6, skin=0.0)
    assert bcc.n_atoms == 54 and np.all((np.asarray(nbrs.idx) < bcc.n_atoms).sum(1) == 8)
    chain = dj.systems.chain(5, spacing=2.0, species=[0, 0, 1, 1, 1], pinned=[0])
    assert chain.dim == 1 and chain.species_names == ("A", "B") and bool(chain.pinned[0])
    np.testing.assert_allclose(np.asarray(chain.positions[:, 0]), [0, 2, 4, 6, 8])


def test_save_npz_round_trip(tmp_path):
    import json

    path = dj.io.save_npz(tmp_path / "run.npz", {"t": np.arange(3.0)}, parameters={"beta": 2.0})
    data = np.load(path)
    np.testing.assert_array_equal(data["t"], np.arange(3.0))
    assert json.loads(str(data["parameters"])) == {"beta": 2.0}


def test_written_files_get_the_usual_permissions(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the result must be readable like any new file."""
    import os

    umask = os.umask(0o022)
    try:
        path = dj.io.save_npz(tmp_path / "shared.npz", {"t": np.arange(3.0)})
    finally:
        os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o644


def test_read_state_needs_a_state(tmp_path):
    """io.read_state names what a plain structure lacks; a frame with k and c_<species> is a DMDState."""
    import ase

    atoms = ase.Atoms("Al2", positions=[[0, 0, 0], [2.8, 0, 0]], cell=[10, 10, 10], pbc=False)
    path = tmp_path / "plain.xyz"
    ase.io.write(path, atoms, format="extxyz")
    with pytest.raises(ValueError, match="does not hold a DMD state: no per-atom k or c_<species>"):
        dj.io.read_state(path, ("Al", "Mg"))
    atoms.new_array("k", np.array([3.0, 4.0]))
    atoms.new_array("c_Mg", np.array([0.1, 0.2]))
    ase.io.write(path, atoms, format="extxyz")
    system, state, pair = dj.io.read_state(path, ("Al", "Mg"))
    assert pair == ("Al", "Mg") and system.n_atoms == 2
    np.testing.assert_allclose(np.asarray(state.order_parameter), [0.8, 0.6])
    np.testing.assert_allclose(np.asarray(state.stiffness), [3.0, 4.0])
    atoms.arrays["k"][1] = -1.0
    ase.io.write(path, atoms, format="extxyz")
    with pytest.raises(ValueError, match="stiffness must be finite and > 0"):
        dj.io.read_state(path, ("Al", "Mg"))
