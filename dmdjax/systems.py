"""Atomic systems: positions, species, cell, pinned atoms; lattices; ASE conversion.

A :class:`System` is an immutable pytree. Species are integer indices into
``species_names`` (static), so that the same array layout serves any number of
species. Lattices are built with ASE where ASE has them (fcc, bcc) so that their
conventions (cell vectors as rows, Å) carry over unchanged.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from . import _validate
from .cell import Cell, make_cell


#: Per-atom array that carries species names which are not chemical symbols.
SPECIES_NAME_ARRAY = "species_name"


class System(eqx.Module):
    """An atomic configuration.

    Attributes:
        positions: ``(N, d)`` Cartesian positions, Å.
        species: ``(N,)`` integer species indices into ``species_names``.
        cell: the :class:`~dmdjax.cell.Cell` (vectors and periodic flags).
        pinned: ``(N,)`` booleans; pinned atoms keep their positions in relaxations.
        species_names: names of the species (e.g. ``("Al", "Mg")``), static.
    """

    positions: Float[Array, "n d"]
    species: Int[Array, " n"]
    cell: Cell
    pinned: Bool[Array, " n"]
    species_names: tuple[str, ...] = eqx.field(static=True)

    @property
    def n_atoms(self) -> int:
        return self.positions.shape[0]

    @property
    def dim(self) -> int:
        return self.positions.shape[1]

    @property
    def n_species(self) -> int:
        return len(self.species_names)

    def species_weights(self) -> Float[Array, "n s"]:
        """One-hot species weights ``(N, S)`` in the dtype of the positions."""
        return species_weights(self.species, self.n_species, self.positions.dtype)

    def with_species_names(self, names: Sequence[str]) -> "System":
        """Re-index the species onto another name order (e.g. a potential's).

        Raises:
            ValueError: if a species of this system is not in ``names``.
        """
        names = tuple(names)
        present = sorted({self.species_names[i] for i in np.unique(np.asarray(self.species))})
        missing = [p for p in present if p not in names]
        if missing:
            raise ValueError(
                f"species {missing} not in the potential's species {list(names)}"
            )
        mapping = np.array([names.index(n) if n in names else -1 for n in self.species_names])
        return System(
            positions=self.positions,
            species=jnp.asarray(mapping[np.asarray(self.species)], dtype=jnp.int32),
            cell=self.cell,
            pinned=self.pinned,
            species_names=names,
        )


def species_weights(species: Int[Array, " n"], n_species: int, dtype=jnp.float32) -> Float[Array, "n s"]:
    """One-hot weights ``w[i, a] = [species_i == a]``, shape ``(N, S)``."""
    return (species[:, None] == jnp.arange(n_species)[None, :]).astype(dtype)


def make_system(
    positions,
    species=None,
    *,
    cell=None,
    pbc: bool | Sequence[bool] = False,
    pinned=None,
    species_names: Sequence[str] | None = None,
) -> System:
    """Validate arrays and build a :class:`System`.

    Arguments:
        positions: ``(N, d)`` positions, Å (``(N,)`` is read as a 1-D chain).
        species: ``(N,)`` integer indices, or ``(N,)`` names (strings). Default: all 0.
        cell: ``(d, d)`` rows or ``d`` diagonal (Å); None for a free system.
        pbc: periodic flags (one or ``d``).
        pinned: ``(N,)`` booleans or a list of pinned indices. Default: none.
        species_names: names for integer species; inferred for string species.

    Raises:
        ValueError: on shape mismatches, non-finite positions, or species out of range.
    """
    pos = np.asarray(positions)
    if pos.ndim == 1:
        pos = pos[:, None]
    if pos.ndim != 2 or pos.shape[1] not in (1, 2, 3):
        raise ValueError(f"positions must have shape (N, d) with d in 1..3; got {np.shape(positions)}")
    if not np.issubdtype(pos.dtype, np.floating):
        pos = pos.astype(float)
    _validate.finite(pos, "positions")
    n, d = pos.shape
    if species is None:
        species_idx = np.zeros(n, dtype=np.int32)
        names = tuple(species_names) if species_names is not None else ("A",)
    else:
        sp = np.asarray(species)
        if sp.shape != (n,):
            raise ValueError(f"species must have shape ({n},) to match positions {pos.shape}; got {sp.shape}")
        if sp.dtype.kind in "US":
            names = tuple(species_names) if species_names is not None else tuple(sorted(set(sp.tolist())))
            unknown = sorted(set(sp.tolist()) - set(names))
            if unknown:
                raise ValueError(f"species {unknown} not in species_names {list(names)}")
            species_idx = np.array([names.index(s) for s in sp], dtype=np.int32)
        else:
            if not np.issubdtype(sp.dtype, np.integer):
                raise ValueError(f"species must be integers or names; got dtype {sp.dtype}")
            n_names = int(sp.max()) + 1 if n else 1
            names = tuple(species_names) if species_names is not None else tuple(
                chr(ord("A") + i) for i in range(n_names)
            )
            if n and (sp.min() < 0 or sp.max() >= len(names)):
                raise ValueError(
                    f"species index {int(sp.max() if sp.max() >= len(names) else sp.min())} out of range "
                    f"for species_names {list(names)}"
                )
            species_idx = sp.astype(np.int32)
    if pinned is None:
        pinned_mask = np.zeros(n, dtype=bool)
    else:
        pm = np.asarray(pinned)
        if pm.dtype == bool:
            if pm.shape != (n,):
                raise ValueError(f"pinned mask must have shape ({n},); got {pm.shape}")
            pinned_mask = pm
        else:
            pinned_mask = np.zeros(n, dtype=bool)
            if pm.size and (pm.min() < -n or pm.max() >= n):
                raise ValueError(f"pinned index out of range for {n} atoms: {pm.tolist()}")
            pinned_mask[pm] = True
    the_cell = make_cell(cell, pbc, dim=d) if cell is not None or not np.any(pbc) else None
    if the_cell is None:
        raise ValueError("a periodic system needs `cell`")
    if the_cell.dim != d:
        raise ValueError(f"cell is {the_cell.dim}-D but positions are {d}-D")
    return System(
        positions=jnp.asarray(pos),
        species=jnp.asarray(species_idx),
        cell=the_cell,
        pinned=jnp.asarray(pinned_mask),
        species_names=names,
    )


def replicas_needed(cell: Cell, interaction_range: float) -> tuple[int, ...]:
    """The fewest copies along each cell vector for which every periodic width is at least
    twice ``interaction_range`` (the minimum-image condition of the neighbour lists); 1 along
    free vectors. ``(1, ..., 1)`` when the cell is already wide enough."""
    widths = cell.perpendicular_widths()
    return tuple(int(np.ceil(2.0 * interaction_range / w - 1e-12)) if periodic and w < 2.0 * interaction_range else 1
                 for periodic, w in zip(cell.pbc, widths))


def replicate(system: System, repeats: Sequence[int]) -> System:
    """The supercell of ``repeats[a]`` copies along each periodic cell vector a (1 along free
    ones), like ASE's ``atoms.repeat``: copy c = (c_0, c_1, ...) of atom i is atom
    ``c_flat · N + i`` (C order over the copies), so copy 0 is ``system`` itself and per-atom
    results fold back by taking the first N rows (every copy sees the same environment).

    Raises:
        ValueError: a repeat < 1, or > 1 along a free direction.
    """
    repeats = tuple(int(r) for r in repeats)
    if len(repeats) != system.dim or min(repeats) < 1:
        raise ValueError(f"repeats must be {system.dim} integers >= 1; got {repeats!r}")
    bad = [axis for axis, (r, periodic) in enumerate(zip(repeats, system.cell.pbc)) if r > 1 and not periodic]
    if bad:
        raise ValueError(f"cannot repeat along free cell vector(s) {bad}; repeats {repeats!r}, pbc {system.cell.pbc}")
    if repeats == (1,) * system.dim:
        return system
    vectors = np.asarray(system.cell.vectors)
    copies = np.stack(np.meshgrid(*[np.arange(r) for r in repeats], indexing="ij"), axis=-1).reshape(-1, system.dim)
    shifts = jnp.asarray(copies @ vectors, dtype=system.positions.dtype)
    positions = (shifts[:, None, :] + system.positions[None]).reshape(-1, system.dim)
    count = len(copies)
    cell = Cell(jnp.asarray(vectors * np.asarray(repeats, float)[:, None], dtype=system.cell.vectors.dtype),
                system.cell.pbc)
    return System(positions=positions, species=jnp.tile(system.species, count), cell=cell,
                  pinned=jnp.tile(system.pinned, count), species_names=system.species_names)


# --------------------------------------------------------------------------- lattices


def chain(n_sites: int, spacing: float = 1.0, species=None, *, species_names=None, pinned=None,
          periodic: bool = False) -> System:
    """A 1-D chain of ``n_sites`` sites at ``x_i = i * spacing`` (free unless ``periodic``)."""
    if n_sites < 2:
        raise ValueError(f"a chain needs n_sites >= 2; got {n_sites}")
    if not spacing > 0:
        raise ValueError(f"spacing must be > 0; got {spacing}")
    positions = (np.arange(n_sites) * float(spacing))[:, None]
    cell = [[n_sites * float(spacing)]] if periodic else None
    return make_system(positions, species, cell=cell, pbc=periodic, pinned=pinned,
                       species_names=species_names)


def triangular(lattice_constant: float, repeats: tuple[int, int], species=None, *, species_names=None,
               pbc=True) -> System:
    """A 2-D triangular lattice, rectangular cell of ``repeats`` = (nx, ny) two-atom cells."""
    nx, ny = repeats
    a = float(lattice_constant)
    base = np.array([[0.0, 0.0], [0.5 * a, 0.5 * np.sqrt(3) * a]])
    cell_rect = np.array([a, np.sqrt(3) * a])
    grid = np.stack(np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij"), -1).reshape(-1, 2)
    positions = (grid[:, None, :] * cell_rect + base[None]).reshape(-1, 2)
    return make_system(positions, species, cell=np.diag(cell_rect * [nx, ny]), pbc=pbc,
                       species_names=species_names)


def cubic_lattice(kind: str, lattice_constant: float, repeats: tuple[int, int, int], element: str = "Al",
                  pbc=True) -> System:
    """An fcc or bcc crystal of cubic cells (``kind`` in ``{"fcc", "bcc"}``), built with ASE."""
    from ase.build import bulk

    if kind not in ("fcc", "bcc"):
        raise ValueError(f"kind must be 'fcc' or 'bcc'; got {kind!r}")
    atoms = bulk(element, kind, a=float(lattice_constant), cubic=True).repeat(tuple(repeats))
    atoms.pbc = pbc
    return from_ase(atoms)


def fcc(lattice_constant: float, repeats: tuple[int, int, int], element: str = "Al", pbc=True) -> System:
    """An fcc crystal of ``repeats`` cubic cells (4 atoms each)."""
    return cubic_lattice("fcc", lattice_constant, repeats, element, pbc)


def bcc(lattice_constant: float, repeats: tuple[int, int, int], element: str = "Fe", pbc=True) -> System:
    """A bcc crystal of ``repeats`` cubic cells (2 atoms each)."""
    return cubic_lattice("bcc", lattice_constant, repeats, element, pbc)


# --------------------------------------------------------------------------- ASE


def from_ase(atoms, species_names: Sequence[str] | None = None, pinned=None) -> System:
    """Convert an ``ase.Atoms`` (3-D) to a :class:`System`.

    Species come from the per-atom array ``species_name`` when present (written by
    :func:`to_ase` for names that are not chemical symbols), else from the chemical
    symbols, ordered as ``species_names`` (for example a
    potential's ``species``); by default the sorted unique symbols. Atoms fixed by an
    ``ase.constraints.FixAtoms`` constraint are pinned unless ``pinned`` is given.

    Raises:
        ValueError: if a symbol is not in ``species_names``.
    """
    if SPECIES_NAME_ARRAY in atoms.arrays:
        symbols = np.asarray(atoms.arrays[SPECIES_NAME_ARRAY]).astype(str)
    else:
        symbols = np.array(atoms.get_chemical_symbols())
    names = tuple(species_names) if species_names is not None else tuple(sorted(set(symbols.tolist())))
    unknown = sorted(set(symbols.tolist()) - set(names))
    if unknown:
        raise ValueError(f"species {unknown} not in the potential's species {list(names)}")
    if pinned is None:
        from ase.constraints import FixAtoms

        fixed = np.zeros(len(atoms), dtype=bool)
        for constraint in atoms.constraints:
            if isinstance(constraint, FixAtoms):
                fixed[constraint.get_indices()] = True
        pinned = fixed
    return make_system(
        atoms.get_positions(),
        symbols,
        cell=np.asarray(atoms.get_cell()),
        pbc=tuple(bool(p) for p in atoms.get_pbc()),
        pinned=pinned,
        species_names=names,
    )


def to_ase(system: System, arrays: Mapping[str, np.ndarray] | None = None, info: Mapping | None = None,
           vacuum: float | None = None):
    """Convert a 3-D :class:`System` to ``ase.Atoms``.

    A free (non-periodic) direction gets ASE's zero cell vector, or with ``vacuum`` (Å) a finite
    one along it that spans the atoms (from the origin or the lowest atom, whichever is lower)
    plus ``vacuum``: what OVITO's analyses (common-neighbour analysis, binning) need, which
    refuse a degenerate cell. The atoms are not moved; the direction stays non-periodic.

    Species names that are chemical symbols become the atoms' symbols; other names
    (e.g. ``"A"``, ``"B"``) are stored in the per-atom array ``species_name`` with
    placeholder symbols ``X``. Per-atom ``arrays`` (first axis N) and ``info`` are
    attached. Pinned atoms become an ``ase.constraints.FixAtoms`` constraint.
    """
    from ase import Atoms
    from ase.constraints import FixAtoms
    from ase.data import chemical_symbols

    if system.dim != 3:
        raise ValueError(f"to_ase needs a 3-D system; this one is {system.dim}-D")
    species = np.asarray(system.species)
    names = np.array(system.species_names)[species]
    all_symbols = all(n in chemical_symbols for n in system.species_names)
    cell = np.asarray(system.cell.vectors, dtype=float).copy()
    positions = np.asarray(system.positions, dtype=float)
    if vacuum is not None and not (np.isfinite(vacuum) and vacuum >= 0):
        raise ValueError(f"vacuum must be finite and >= 0 Å; got {vacuum!r}")
    for i, periodic in enumerate(system.cell.pbc):
        if periodic:
            continue
        if vacuum is None:
            cell[i] = 0.0  # ASE's convention for a free direction
            continue
        norm = np.linalg.norm(cell[i])
        direction = cell[i] / norm if norm > 0 else np.eye(3)[i]
        along = positions @ direction
        cell[i] = direction * (along.max(initial=0.0) - min(0.0, along.min(initial=0.0)) + vacuum)
    atoms = Atoms(
        symbols=names.tolist() if all_symbols else ["X"] * len(names),
        positions=positions,
        cell=cell,
        pbc=system.cell.pbc,
    )
    if not all_symbols:
        atoms.new_array(SPECIES_NAME_ARRAY, names.astype(str))
    pinned = np.flatnonzero(np.asarray(system.pinned))
    if pinned.size:
        atoms.set_constraint(FixAtoms(indices=pinned))
    for key, value in (arrays or {}).items():
        value = np.asarray(value)
        if value.shape[:1] != (len(atoms),):
            raise ValueError(f"per-atom array {key!r} must have first axis {len(atoms)}; got shape {value.shape}")
        atoms.new_array(key, value)
    atoms.info.update(info or {})
    return atoms
