"""Bad input gets a clear error that names the bad value."""

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
