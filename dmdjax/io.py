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
    target.parent.mkdir(parents=True, exist_ok=True)
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


def read_structure(path: str | os.PathLike, species_names: Sequence[str] | None = None, index=-1):
    """Read a structure with ``ase.io.read``; return ``(System, ase.Atoms)``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if ASE cannot read it, or a species is not in ``species_names``.
    """
    import ase.io

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"structure file not found: {str(p)!r}")
    try:
        atoms = ase.io.read(p, index=index)
    except Exception as err:  # ASE raises many types for malformed files
        raise ValueError(f"could not read structure {str(p)!r}: {err}") from err
    return from_ase(atoms, species_names=species_names), atoms


def write_extxyz(
    path: str | os.PathLike,
    frames: System | Sequence[System],
    arrays: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]] | None = None,
    info: Mapping | Sequence[Mapping] | None = None,
) -> Path:
    """Write one or several frames as extended XYZ (read by ASE and OVITO).

    Arguments:
        path: the output file (written atomically).
        frames: a :class:`System` or a sequence of them (3-D).
        arrays: per-atom arrays for each frame (e.g. ``{"c": c, "k": k}``); one mapping
            for all frames or one per frame.
        info: per-frame scalars (e.g. ``{"time": t}``); one mapping or one per frame.
    """
    import ase.io

    frames = [frames] if isinstance(frames, System) else list(frames)
    n = len(frames)
    arrays_list = [arrays] * n if arrays is None or isinstance(arrays, Mapping) else list(arrays)
    info_list = [info] * n if info is None or isinstance(info, Mapping) else list(info)
    if len(arrays_list) != n or len(info_list) != n:
        raise ValueError(f"arrays and info need one entry per frame ({n})")
    images = [to_ase(f, a, i) for f, a, i in zip(frames, arrays_list, info_list)]
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
    if output.exists() and any(output.iterdir()) and not (overwrite or resume):
        hint = "pass overwrite=True (--overwrite)" if resume is None else \
            "pass --resume to continue its run or --overwrite"
        raise FileExistsError(f"output folder {str(output)!r} is not empty: {hint}")
    output.mkdir(parents=True, exist_ok=True)
    device = jax.devices()[0]
    description = {**run, "device": device.device_kind, "platform": device.platform, "jax": jax.__version__,
                   "python": platform.python_version(), "dtype": "float64" if jax.config.jax_enable_x64 else "float32"}
    write_json(output / "run.json", description)
    return description


def write_study_summary(output: str | os.PathLike, summary: Mapping) -> dict:
    """Write ``summary.json`` in ``output`` with ``files``: every file there, itself included."""
    output = Path(output)
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
