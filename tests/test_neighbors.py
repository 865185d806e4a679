"""Neighbour lists: completeness against brute force, overflow detection and re-allocation."""

import equinox as eqx
import jax
import numpy as np
import pytest

import dmdjax as dj


def _brute_force_pairs(positions, cell, cutoff):
    n = len(positions)
    pairs = set()
    for i in range(n):
        d = np.asarray(cell.displacement(positions, positions[i][None]))
        r = np.linalg.norm(d, axis=1)
        for j in np.nonzero(r < cutoff)[0]:
            if j != i:
                pairs.add((i, int(j)))
    return pairs


def _listed_pairs(nbrs, positions, cell, cutoff):
    idx = np.asarray(nbrs.idx)
    n = len(positions)
    rows = np.repeat(np.arange(n), idx.shape[1])
    cols = idx.ravel()
    listed = cols < n
    rows, cols = rows[listed], cols[listed]
    distance = np.linalg.norm(np.asarray(cell.displacement(positions[cols], positions[rows])), axis=1)
    close = distance < cutoff
    return set(zip(rows[close].tolist(), cols[close].tolist()))


@pytest.mark.parametrize(
    "cell_vectors,pbc",
    [
        (np.array([[9.0, 0, 0], [2.0, 8.5, 0], [1.0, -1.5, 9.5]]), (True, True, True)),  # triclinic
        (np.diag([9.0, 9.0, 9.0]), (True, False, True)),  # mixed
        (None, (False, False, False)),  # free cluster
    ],
)
def test_list_contains_every_pair_within_cutoff(cell_vectors, pbc):
    rng = np.random.default_rng(0)
    frac = rng.random((150, 3))
    positions = frac @ (cell_vectors if cell_vectors is not None else np.diag([9.0, 9.0, 9.0]))
    system = dj.make_system(positions, cell=cell_vectors, pbc=pbc)
    cutoff = 2.7
    nbrs = dj.neighbor_list(system.positions, system.cell, cutoff, skin=0.4)
    expected = _brute_force_pairs(system.positions, system.cell, cutoff)
    assert len(expected) > 300
    assert _listed_pairs(nbrs, system.positions, system.cell, cutoff) == expected
    assert not bool(nbrs.overflow)


def test_one_and_two_dimensional_systems():
    chain = dj.systems.chain(20, spacing=1.0)
    nbrs = dj.neighbor_list(chain.positions, chain.cell, 2.2, skin=0.1)
    assert _listed_pairs(nbrs, chain.positions, chain.cell, 2.2) == _brute_force_pairs(
        chain.positions, chain.cell, 2.2)
    tri = dj.systems.triangular(1.0, (8, 5))
    nbrs = dj.neighbor_list(tri.positions, tri.cell, 1.05, skin=0.1)
    counts = (np.asarray(nbrs.idx) < tri.n_atoms).sum(1)
    assert tri.n_atoms == 80 and np.all(counts == 6)  # six nearest neighbours on a triangular lattice


def _lj_setup():
    potential = dj.LennardJones(1.0, 1.0, cutoff=2.5)
    system = dj.systems.triangular(1.12, (6, 4))
    system = dj.make_system(np.c_[np.asarray(system.positions), np.zeros(system.n_atoms)],
                            cell=np.diag([6 * 1.12, 4 * 1.12 * np.sqrt(3), 20.0]), pbc=(True, True, False))
    return potential, system


def test_overflow_raises_and_refresh_reallocates():
    potential, system = _lj_setup()
    nbrs = dj.neighbor_list(system.positions, system.cell, potential.cutoff, skin=0.2, capacity_multiplier=1.0)
    # Gather twelve far-away atoms on a shell around atom 0: its neighbour count overflows.
    moved = np.asarray(system.positions).copy()
    far = np.argsort(-np.linalg.norm(np.asarray(system.cell.displacement(system.positions, system.positions[0])),
                                     axis=1))[:12]
    directions = np.random.default_rng(0).normal(size=(12, 3))
    moved[far] = moved[0] + 1.1 * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    updated = jax.jit(lambda n, x: n.update(x))(nbrs, moved)
    assert bool(updated.overflow)
    with pytest.raises(eqx.EquinoxRuntimeError, match="neighbour list overflow"):
        eqx.filter_jit(dj.potential_energy)(potential, moved, system.species, system.cell, updated)
    with pytest.raises(eqx.EquinoxRuntimeError, match="neighbour list overflow"):
        dj.evaluate(potential, dj.System(moved, system.species, system.cell, system.pinned, ("A",)), updated)
    refreshed = dj.neighbors.refresh(nbrs, moved, system.cell)
    assert not bool(refreshed.overflow) and refreshed.capacity > nbrs.capacity
    fresh = dj.neighbor_list(moved, system.cell, potential.cutoff, skin=0.2)
    e_refreshed = float(dj.potential_energy(potential, moved, system.species, system.cell, refreshed))
    e_fresh = float(dj.potential_energy(potential, moved, system.species, system.cell, fresh))
    assert e_refreshed == pytest.approx(e_fresh, rel=1e-12)


def test_leaving_padded_free_region_is_flagged():
    potential, system = _lj_setup()
    nbrs = dj.neighbor_list(system.positions, system.cell, potential.cutoff, skin=0.2)
    far = system.positions.at[0, 2].add(50.0)  # far out along the free z direction
    assert bool(nbrs.update(far).overflow)


def test_small_cell_and_short_list_are_errors():
    system = dj.systems.fcc(4.05, (2, 2, 2))
    with pytest.raises(ValueError, match="cell too small"):
        dj.neighbor_list(system.positions, system.cell, 7.5)
    potential = dj.LennardJones(1.0, 1.0, cutoff=2.5)
    small = dj.systems.fcc(1.5, (4, 4, 4))
    nbrs = dj.neighbor_list(small.positions, small.cell, 1.0)
    with pytest.raises(ValueError, match="below the potential's"):
        dj.potential_energy(potential, small.positions, small.species, small.cell, nbrs)


def test_blocked_search_equals_ase_and_updates_under_jit(monkeypatch):
    """The cell-list search in many small row blocks lists exactly ASE's pairs (an independent
    implementation), in a rattled triclinic crystal, and again after a jitted update that
    moved atoms by more than half the skin."""
    from ase.build import bulk
    from ase.neighborlist import neighbor_list as ase_neighbor_list

    monkeypatch.setattr(dj.neighbors, "SEARCH_BLOCK_CANDIDATES", 5000)  # ~10 rows per block
    atoms = bulk("Cu", "fcc", a=3.6).repeat((6, 7, 5))  # primitive cell: triclinic
    rng = np.random.default_rng(4)
    atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
    system = dj.from_ase(atoms)
    cutoff, skin = 4.4, 0.4
    nbrs = dj.neighbor_list(system.positions, system.cell, cutoff, skin=skin)

    def ase_pairs(positions, radius):
        moved = atoms.copy()
        moved.positions = np.asarray(positions)
        i, j = ase_neighbor_list("ij", moved, radius)
        return set(zip(i.tolist(), j.tolist()))

    assert len(ase_pairs(system.positions, cutoff)) > 20 * len(atoms)
    assert _listed_pairs(nbrs, system.positions, system.cell, cutoff) == ase_pairs(system.positions, cutoff)
    shifted = system.positions + jax.numpy.asarray(rng.normal(0.0, 0.15, atoms.positions.shape))
    updated = jax.jit(lambda n, x: n.update(x))(nbrs, shifted)
    assert float(nbrs.max_displacement(shifted)) > 0.5 * skin  # the update searched again
    assert not bool(updated.overflow)
    assert float(updated.max_displacement(shifted)) == 0.0
    assert _listed_pairs(updated, shifted, system.cell, cutoff) == ase_pairs(shifted, cutoff)


def test_crowded_cell_overflow_is_flagged():
    """More atoms in one search cell than its capacity: the update flags overflow, even when no
    atom has more neighbours than the list holds."""
    system = dj.systems.fcc(4.05, (5, 5, 5))
    nbrs = dj.neighbor_list(system.positions, system.cell, 3.0, skin=0.3, capacity_multiplier=1.0)
    crowded = np.asarray(system.positions).copy()
    crowded[:40] = crowded[0] + np.random.default_rng(0).uniform(0.0, 1.0, (40, 3))
    assert bool(jax.jit(lambda n, x: n.update(x))(nbrs, crowded).overflow)


def test_rebuilt_list_keeps_the_old_shape_so_compiled_code_is_reused():
    # A free slab that expands along z: the rebuilt list would have fewer columns and one more
    # cell along z; with the old list's shape kept, a function compiled for it is not traced again.
    potential = dj.LennardJones(1.0, 1.0, cutoff=2.5)
    bulk = dj.systems.fcc(1.55, (5, 5, 8))
    width = np.diag(np.asarray(bulk.cell.vectors))
    system = dj.make_system(bulk.positions, cell=np.diag([width[0], width[1], 40.0]), pbc=(True, True, False))
    nbrs = dj.neighbor_list(system.positions, system.cell, potential.cutoff, skin=0.3)
    traces = []

    @jax.jit
    def energy(positions, neighbors):
        traces.append(1)
        return dj.potential_energy(potential, positions, system.species, system.cell, neighbors)

    energy(system.positions, nbrs)
    expanded = np.asarray(system.positions) * np.array([1.0, 1.0, 1.15])  # z by 15 %: far past skin / 2
    assert float(nbrs.max_displacement(expanded)) > nbrs.skin
    fresh = dj.neighbor_list(expanded, system.cell, potential.cutoff, skin=0.3)
    rebuilt = dj.neighbors.covering(nbrs, expanded, system.cell, potential.cutoff)
    assert rebuilt is not nbrs and (fresh.capacity, fresh.grid) != (nbrs.capacity, nbrs.grid)  # the case at stake
    assert rebuilt.idx.shape == nbrs.idx.shape and rebuilt.grid == nbrs.grid
    assert jax.tree_util.tree_structure(rebuilt) == jax.tree_util.tree_structure(nbrs)
    assert _listed_pairs(rebuilt, expanded, system.cell, potential.cutoff) == _brute_force_pairs(
        expanded, system.cell, potential.cutoff)
    assert float(energy(expanded, rebuilt)) == pytest.approx(
        float(dj.potential_energy(potential, expanded, system.species, system.cell, fresh)), rel=1e-12)
    assert len(traces) == 1
    chain = dj.systems.chain(20, spacing=1.0)
    with pytest.raises(ValueError, match="shape_of is a 3-D list"):
        dj.neighbor_list(chain.positions, chain.cell, 2.2, shape_of=nbrs)
