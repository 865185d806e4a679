"""Files: structures in (anything ASE reads), extended XYZ out, arrays to .npz, study folders
(``run.json`` and ``summary.json``).

Every writer is atomic: it writes a temporary file beside the target and renames it
into place, so an error never leaves a half-written file and never destroys an
existing one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from .systems import System, from_ase, to_ase


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it to ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched. The file gets the
    permissions of a newly created one (0666 less the umask), not mkstemp's private 0600.
    """
    target = Path(path)
    make_folder(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


#: Temporary files of :func:`atomic_path` are named ``.<name>.<random>.tmp<suffix>``.
TEMPORARY_PATTERN = ".*.tmp*"


def make_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (and its parents); ``ValueError`` naming the part that is a file."""
    folder = Path(folder)
    for part in (folder, *folder.parents):
        if part.exists() and not part.is_dir():
            raise ValueError(f"cannot create folder {str(folder)!r}: {str(part)!r} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def check_writable(folder: str | os.PathLike) -> None:
    """Raise ``ValueError`` before any work if files cannot be created in ``folder`` (or in the
    nearest existing folder above it): permission denied, a read-only file system, or a file
    where a folder should be."""
    folder = Path(folder)
    for part in (folder, *folder.parents):
        if part.exists():
            if not part.is_dir():
                raise ValueError(f"cannot write into {str(folder)!r}: {str(part)!r} is a file, not a folder")
            try:
                fd, probe = tempfile.mkstemp(prefix=".dmdjax-write-test.", dir=part)
            except OSError as err:
                raise ValueError(f"cannot write into {str(part)!r}: {err.strerror}") from None
            os.close(fd)
            os.unlink(probe)
            return


def remove_temporary_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an interrupted :func:`atomic_path` left in ``folder``."""
    stale = [p for p in Path(folder).rglob(TEMPORARY_PATTERN) if p.is_file()]
    for p in stale:
        p.unlink()
    return stale


def read_structure(path: str | os.PathLike, species_names: Sequence[str] | None = None, index=-1, *,
                   format: str | None = None, atom_style: str | None = None, types: Sequence[str] | None = None):
    """Read a structure with ``ase.io.read``; return ``(System, ase.Atoms)``.

    Arguments:
        path: the file. species_names: the species a potential knows (checked).
        index: which frame of a trajectory (default the last).
        format: an ASE format name (``"extxyz"``, ``"vasp"``, ``"lammps-data"``, ...); default
            guessed by ASE from the name and contents.
        atom_style: for ``lammps-data``: ``"atomic"``, ``"charge"``, ``"full"``, ... (default
            guessed by ASE from the ``Atoms`` section).
        types: for ``lammps-data``: the element of LAMMPS atom type 1, 2, ... (default
            ``species_names`` in order, as ``pair_coeff * * file Al Mg`` maps them).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if ASE cannot read it or tell its format, or a species is not in ``species_names``.
    """
    import ase.io
    from ase.data import atomic_numbers
    from ase.io.formats import UnknownFileTypeError

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"structure file not found: {str(p)!r}")
    options = {}
    if format == "lammps-data":
        types = list(types if types is not None else species_names or [])
        unknown = [name for name in types if name not in atomic_numbers]
        if not types or unknown:
            raise ValueError(f"a LAMMPS data file numbers its atom types: name their elements in order "
                             f"(--types Al,Mg); got {types or None}")
        options = {"Z_of_type": {i + 1: atomic_numbers[name] for i, name in enumerate(types)}, "units": "metal",
                   "atom_style": atom_style}
    elif atom_style is not None or types is not None:
        raise ValueError(f"atom_style and types are for format='lammps-data'; got format={format!r}")
    try:
        atoms = ase.io.read(p, index=index, format=format, **options)
    except UnknownFileTypeError as err:
        raise ValueError(f"cannot tell the format of {str(p)!r} ({err}); name it with --format (an ASE format "
                         "name: extxyz, vasp, cif, lammps-data, ...)") from err
    except Exception as err:  # ASE raises many types for malformed files
        if format is None:
            hint = f"ASE took it for {_guessed_format(p)!r}: if it is not, name the format with --format"
        else:
            hint = f"as {format!r}"
        raise ValueError(f"could not read structure {str(p)!r} ({hint}): {type(err).__name__}: {err}") from err
    return from_ase(atoms, species_names=species_names), atoms


def _guessed_format(path: Path) -> str:
    from ase.io.formats import filetype

    try:
        return filetype(str(path))
    except Exception:  # noqa: BLE001 - only for the message
        return "an unknown format"


#: Per-atom concentration columns are named ``c_<species>`` (e.g. ``c_Al``, ``c_Mg``).
CONCENTRATION_PREFIX = "c_"
#: The frame key that names the species of a legacy per-atom ``c`` column.
LEGACY_CONCENTRATION_KEY = "c_species"


def concentration_arrays(concentration, species: Sequence[str]) -> dict:
    """Per-atom columns ``{"c_A": c, "c_B": 1 − c}`` for the two species of the mean field,
    ``species = (A, B)``: the self-describing convention of every file dmdjax writes."""
    a, b = species
    c = np.asarray(concentration, dtype=float)
    if a == b:
        return {f"{CONCENTRATION_PREFIX}{a}": np.ones_like(c)}
    return {f"{CONCENTRATION_PREFIX}{a}": c, f"{CONCENTRATION_PREFIX}{b}": 1.0 - c}


def read_concentrations(atoms, species_names: Sequence[str], path="the structure"):
    """The species concentrations a structure file carries, or None if it carries none.

    Columns ``c_<species>`` name their species; a legacy column ``c`` is read only with the
    frame key ``c_species`` naming its species. One column on a two-species potential stands
    for c of that species (the other holds 1 − c); two columns must sum to 1 on every atom.

    Returns:
        ``(c, (A, B))``: the concentration ``(N,)`` of species A and the species pair (A, B)
        of the mean field (A, B in the potential's order), or None.

    Raises:
        ValueError: ambiguous input (a bare ``c``, ``c`` beside ``c_X`` columns), an unknown
            species, more than two species, values outside [0, 1] or columns not summing to 1.
    """
    columns = {name[len(CONCENTRATION_PREFIX):]: np.asarray(values, dtype=float)
               for name, values in atoms.arrays.items() if name.startswith(CONCENTRATION_PREFIX)}
    if "c" in atoms.arrays:
        if columns:
            raise ValueError(f"{path} has both a per-atom 'c' and columns {sorted('c_' + k for k in columns)}: "
                             "ambiguous; keep only the c_<species> columns")
        named = atoms.info.get(LEGACY_CONCENTRATION_KEY)
        if named is None:
            raise ValueError(f"{path}: the per-atom 'c' does not say which species it counts (dmdjax wrote the Mg "
                             f"fraction there before 0.1.1); name the column c_<species> (e.g. c_Mg) or add the "
                             f"frame key {LEGACY_CONCENTRATION_KEY}=<species>")
        columns = {str(named): np.asarray(atoms.arrays["c"], dtype=float)}
    if not columns:
        return None
    unknown = [name for name in columns if name not in species_names]
    if unknown:
        raise ValueError(f"{path}: concentration of species {unknown} not in the potential's species "
                         f"{list(species_names)}")
    n = len(atoms)
    for name, values in columns.items():
        bad = ~np.isfinite(values) | (values < 0) | (values > 1)
        if values.shape != (n,) or np.any(bad):
            where = np.flatnonzero(bad)[:5].tolist() if values.shape == (n,) else "shape"
            raise ValueError(f"{path}: c_{name} must hold {n} concentrations in [0, 1]; bad at atoms {where}")
    ordered = [name for name in species_names if name in columns]
    if len(ordered) > 2:
        raise ValueError(f"{path}: concentrations of {ordered}: the mean field takes two species")
    if len(ordered) == 1:
        others = [name for name in species_names if name != ordered[0]]
        if len(others) > 1:
            raise ValueError(f"{path}: only c_{ordered[0]} is given and the potential has species "
                             f"{list(species_names)}: name the second species' column too")
        if not others:
            return columns[ordered[0]], (ordered[0], ordered[0])
        a, b = sorted((ordered[0], others[0]), key=list(species_names).index)
        c_a = columns[ordered[0]] if a == ordered[0] else 1.0 - columns[ordered[0]]
        return c_a, (a, b)
    a, b = ordered
    total = columns[a] + columns[b]
    if np.max(np.abs(total - 1.0)) > 1e-6:
        worst = int(np.argmax(np.abs(total - 1.0)))
        raise ValueError(f"{path}: c_{a} + c_{b} must be 1 on every atom; atom {worst} has {total[worst]!r}")
    return columns[a], (a, b)


def read_state(path: str | os.PathLike, species_names: Sequence[str], index=-1):
    """A :class:`~dmdjax.DMDState` from an extended-XYZ frame that carries one — as written by
    ``dmdjax energy --output`` or a study's ``frames.extxyz``: positions, the per-atom
    stiffness ``k`` (eV/Å²) and concentrations ``c_<species>`` (:func:`read_concentrations`).

    Arguments:
        species_names: the potential's species (``potential.species``).
        index: the frame (ASE's ``index``; default the last).

    Returns:
        ``(system, state, (A, B))``: the :class:`~dmdjax.System`, the state (s = 2 c_A − 1, in the
        positions' dtype) and the species pair of the mean field (for ``VGFreeEnergy(species=...)``).

    Raises:
        FileNotFoundError, ValueError: an unreadable file, or a frame without ``k`` or
            concentrations (named), or an invalid state.
    """
    import jax.numpy as jnp

    from .state import DMDState

    system, atoms = read_structure(path, species_names, index)
    read = read_concentrations(atoms, species_names, repr(str(path)))
    missing = [name for name, ok in (("k", "k" in atoms.arrays), ("c_<species>", read is not None)) if not ok]
    if missing:
        raise ValueError(f"{str(path)!r} does not hold a DMD state: no per-atom {' or '.join(missing)} "
                         "(for a plain structure, use VGFreeEnergy.initial_state)")
    concentration, pair = read
    dtype = system.positions.dtype
    state = DMDState(system.positions, jnp.asarray(np.asarray(atoms.arrays["k"], dtype=float), dtype),
                     jnp.asarray(2.0 * concentration - 1.0, dtype))
    return system, state, pair


#: Å of vacuum beyond the atoms along a free direction of a written frame.
FRAME_VACUUM = 10.0


def write_extxyz(
    path: str | os.PathLike,
    frames: System | Sequence[System],
    arrays: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]] | None = None,
    info: Mapping | Sequence[Mapping] | None = None,
    vacuum: float | None = FRAME_VACUUM,
) -> Path:
    """Write one or several frames as extended XYZ (read by ASE and OVITO).

    Arguments:
        path: the output file (written atomically).
        frames: a :class:`System` or a sequence of them (3-D).
        arrays: per-atom arrays for each frame (e.g. ``{"c": c, "k": k}``); one mapping
            for all frames or one per frame.
        info: per-frame scalars (e.g. ``{"time": t}``); one mapping or one per frame.
        vacuum: free directions get a finite cell vector spanning the atoms plus this many Å
            (default :data:`FRAME_VACUUM`; OVITO's analyses need a non-degenerate cell), or
            ASE's zero vector with None (:func:`~dmdjax.systems.to_ase`).
    """
    import ase.io

    frames = [frames] if isinstance(frames, System) else list(frames)
    n = len(frames)
    arrays_list = [arrays] * n if arrays is None or isinstance(arrays, Mapping) else list(arrays)
    info_list = [info] * n if info is None or isinstance(info, Mapping) else list(info)
    if len(arrays_list) != n or len(info_list) != n:
        raise ValueError(f"arrays and info need one entry per frame ({n})")
    images = [to_ase(f, a, i, vacuum=vacuum) for f, a, i in zip(frames, arrays_list, info_list)]
    with atomic_path(path) as tmp:
        ase.io.write(tmp, images, format="extxyz")
    return Path(path)


def save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], parameters: Mapping | None = None) -> Path:
    """Save arrays to ``.npz`` atomically; ``parameters`` go in as a JSON string under ``parameters``."""
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    if parameters is not None:
        payload["parameters"] = np.asarray(json.dumps(parameters, default=_json_default))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **payload)
    return Path(path)


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write JSON atomically (NumPy and JAX scalars and arrays are converted)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    return Path(path)


def open_study_folder(output: str | os.PathLike, run: Mapping, *, overwrite: bool = False,
                      resume: bool | None = None) -> dict:
    """Create a study's output folder and write its ``run.json``: ``run`` plus the device,
    platform, JAX and Python versions and the dtype (float64 when x64 is on). Returns that dict.

    ``resume`` is None for studies that cannot resume; otherwise a non-empty folder is also
    accepted when it is True.

    Raises:
        FileExistsError: ``output`` holds files and neither ``overwrite`` nor ``resume`` is set.
    """
    import platform

    import jax

    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"output {str(output)!r} is a file, not a folder")
    occupied = output.exists() and any(output.iterdir())
    if occupied and not (overwrite or resume):
        hint = "pass overwrite=True (--overwrite)" if resume is None else \
            "pass --resume to continue its run or --overwrite"
        raise FileExistsError(f"output folder {str(output)!r} is not empty: {hint}")
    check_writable(output)
    device = jax.devices()[0]
    description = {**run, "device": device.device_kind, "platform": device.platform, "jax": jax.__version__,
                   "python": platform.python_version(), "dtype": "float64" if jax.config.jax_enable_x64 else "float32"}
    if resume:
        previous = _resumable_run(output, description)
        remove_temporary_files(output)
        return previous  # run.json stays as the run wrote it
    make_folder(output)
    remove_temporary_files(output)
    write_json(output / "run.json", description)
    return description


#: run.json keys that must agree for a run to be resumed (the machine may differ).
RESUME_KEYS = ("study", "parameters", "dtype")


def _resumable_run(output: Path, description: Mapping) -> dict:
    """The ``run.json`` of the run in ``output``, checked to be the run ``description`` asks for."""
    path = output / "run.json"
    if not path.is_file():
        raise ValueError(f"--resume: {str(output)!r} holds no dmdjax run (no run.json)")
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"--resume: {str(path)!r} is damaged and cannot be read ({err})") from None
    if previous.get("study") != description.get("study"):
        raise ValueError(f"--resume: {str(output)!r} holds a run of {previous.get('study')!r}, "
                         f"not of {description.get('study')!r}")
    expected = json.loads(json.dumps({key: description.get(key) for key in RESUME_KEYS}, default=_json_default))
    changed = []
    for key in RESUME_KEYS:
        old, new = previous.get(key), expected[key]
        if isinstance(old, dict) and isinstance(new, dict):
            changed += [f"{name}: {old.get(name)!r} -> {new.get(name)!r}" for name in sorted(set(old) | set(new))
                        if old.get(name) != new.get(name)]
        elif old != new:
            changed.append(f"{key}: {old!r} -> {new!r}")
    if changed:
        raise ValueError(f"--resume: the settings differ from the run in {str(output)!r} ({'; '.join(changed)}); "
                         "resume with its settings, or start a new run with --overwrite")
    return {**previous, **{k: v for k, v in description.items() if k not in RESUME_KEYS}}


def write_study_summary(output: str | os.PathLike, summary: Mapping) -> dict:
    """Write ``summary.json`` in ``output`` with ``files``: every file there, itself included."""
    output = Path(output)
    remove_temporary_files(output)
    files = {str(f.relative_to(output)) for f in output.rglob("*") if f.is_file()} | {"summary.json"}
    summary = {**summary, "files": sorted(files)}
    write_json(output / "summary.json", summary)
    return summary


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
