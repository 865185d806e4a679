"""Embedded-atom method (EAM) potentials for alloys, from LAMMPS tabulated files.

    E = Σ_i F_{a_i}(ρ_i) + ½ Σ_{i≠j} φ_{a_i a_j}(r_ij),
    ρ_i = Σ_j f_{a_j → a_i}(r_ij)                                  (DESIGN.md §1)

with f depending on the source species only for ``eam`` / ``eam/alloy`` (setfl) files
and on source and host for ``eam/fs`` (Finnis–Sinclair) files. The files are parsed
by ASE's ``ase.calculators.eam.EAM`` (every element of the file is kept), and the
tables become cubic splines evaluated in JAX. Files store r·φ(r) for the pair term;
dmdjax interpolates r·φ and divides by r, as LAMMPS does.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._base import Potential
from ._spline import UniformCubicSpline

#: Potentials shipped with dmdjax, loadable by name (see ``data/CITATION.md``).
BUNDLED_POTENTIALS = {"AlMg_Mendelev2009": "AlMg_Mendelev2009.eam.fs", "Fe_Mendelev2003": "Fe_Mendelev2003.eam.fs"}

_FORMS = {".fs": "fs", ".alloy": "alloy", ".setfl": "alloy", ".eam": "eam"}


class EAM(Potential):
    """A tabulated EAM potential over ``species``.

    Attributes:
        radial_spline: splines of ``[r·φ_ab(r), f_{b→a}(r)]``, batch shape ``(2, S, S)``
            (index ``[1, source, host]`` for densities).
        embedding_spline: splines of F_a(ρ), batch shape ``(S,)``.
        species: element names in file order.
        cutoff: the file's cut-off radius, Å.
        form: ``"eam"``, ``"alloy"`` or ``"fs"``.
        source: where the tables came from (file name), for provenance.
        masses: the file's atomic masses (amu) per species, or None for tables without them.
    """

    radial_spline: UniformCubicSpline
    embedding_spline: UniformCubicSpline
    species: tuple[str, ...] = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)
    form: str = eqx.field(static=True)
    source: str = eqx.field(static=True)
    masses: tuple[float, ...] | None = eqx.field(static=True, default=None)

    @property
    def is_embedded(self) -> bool:
        return True

    def radial(self, r: Float[Array, "..."]) -> Float[Array, "... 2 s s"]:
        values = self.radial_spline(r)  # r.shape + (2, S, S): [r·φ, f]
        inside = r < self.cutoff
        r_safe = jnp.maximum(r, 0.5 * self.radial_spline.dx)
        # One multiply of the whole block (slicing it is several times slower on XLA:CPU).
        scale = jnp.stack([jnp.where(inside, 1.0 / r_safe, 0.0), jnp.where(inside, 1.0, 0.0)], axis=-1)
        return values * scale[..., :, None, None]

    def radial_and_derivative(self, r: Float[Array, "..."]) -> tuple[Array, Array]:
        values, slopes = self.radial_spline.value_and_derivative(r)  # [r·φ, f] and their slopes
        inside = r < self.cutoff
        inverse = jnp.where(inside, 1.0 / jnp.maximum(r, 0.5 * self.radial_spline.dx), 0.0)
        one = jnp.where(inside, 1.0, 0.0)
        scale = jnp.stack([inverse, one], axis=-1)[..., :, None, None]
        # φ = U/r: φ' = (U' − φ)/r; f' as tabulated.
        radial = values * scale
        shift = jnp.stack([inverse, jnp.zeros_like(inverse)], axis=-1)[..., :, None, None]
        return radial, slopes * scale - radial * shift

    def density(self, r: Float[Array, "..."]) -> Float[Array, "... s s"]:
        # Only the density splines: half the coefficients of the radial block.
        spline = UniformCubicSpline(self.radial_spline.coefficients[:, 1], self.radial_spline.x0,
                                    self.radial_spline.dx)
        return jnp.where((r < self.cutoff)[..., None, None], spline(r), 0.0)

    def species_radial(self, r, host, neighbor) -> tuple[Array, Array]:
        # Gather only the three splines of the pair: [r·φ_hn, f_{n→h}, f_{h→n}], 12 coefficients.
        spline = self.radial_spline
        n = self.n_species
        coefficients = spline.coefficients.astype(r.dtype).reshape(spline.n_intervals * 2 * n * n, 4)
        u = (r - spline.x0) / spline.dx
        k = jnp.clip(jnp.floor(u), 0, spline.n_intervals - 1)
        t = ((u - k) * spline.dx)[..., None]
        which = jnp.stack([host * n + neighbor, n * n + neighbor * n + host, n * n + host * n + neighbor], axis=-1)
        # One row of 4 coefficients per function (a row gather: a 2-D gather is ten times slower on XLA:CPU).
        c = coefficients[k.astype(jnp.int32)[..., None] * (2 * n * n) + which]  # r.shape + (3, 4)
        values = c[..., 0] + t * (c[..., 1] + t * (c[..., 2] + t * c[..., 3]))
        slopes = c[..., 1] + t * (2.0 * c[..., 2] + 3.0 * t * c[..., 3])
        inside = (r < self.cutoff)[..., None]
        inverse = 1.0 / jnp.maximum(r, 0.5 * spline.dx)[..., None]
        pair = values[..., :1] * inverse
        values = jnp.concatenate([pair, values[..., 1:]], axis=-1)
        slopes = jnp.concatenate([(slopes[..., :1] - pair) * inverse, slopes[..., 1:]], axis=-1)
        return jnp.where(inside, values, 0.0), jnp.where(inside, slopes, 0.0)

    def embedding(self, density: Float[Array, "... s"]) -> Float[Array, "... s"]:
        # Evaluate F_a at ρ_a for each host species a: take the diagonal of the batch.
        values = self.embedding_spline(density)  # density.shape + (S,)
        return jnp.diagonal(values, axis1=-2, axis2=-1)


def resolve_potential_path(name_or_path: str | os.PathLike) -> Path:
    """A bundled potential's name (see :data:`BUNDLED_POTENTIALS`) or a file path."""
    key = str(name_or_path)
    if key in BUNDLED_POTENTIALS:
        return Path(str(resources.files("dmdjax.potentials") / "data" / BUNDLED_POTENTIALS[key]))
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"potential file not found: {key!r} (bundled potentials: {sorted(BUNDLED_POTENTIALS)})"
        )
    return path


def load_eam(name_or_path: str | os.PathLike, form: str | None = None) -> EAM:
    """Read a LAMMPS ``eam``, ``eam/alloy`` or ``eam/fs`` file (or a bundled name).

    Arguments:
        name_or_path: a file path, or the name of a bundled potential
            (``"AlMg_Mendelev2009"``).
        form: ``"eam"``, ``"alloy"`` or ``"fs"``; by default from the file suffix
            (``.eam``, ``.alloy``/``.setfl``, ``.fs``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown form, or a malformed file (the message names the file).
    """
    from ase.calculators.eam import EAM as AseEAM

    path = resolve_potential_path(name_or_path)
    if form is None:
        form = _FORMS.get(path.suffix.lower())
        if form is None:
            raise ValueError(
                f"cannot tell the EAM format of {str(path)!r} from its suffix; pass form='eam', 'alloy' or 'fs'"
            )
    if form not in ("eam", "alloy", "fs"):
        raise ValueError(f"form must be 'eam', 'alloy' or 'fs'; got {form!r}")
    try:
        parsed = AseEAM(potential=str(path), form=form)
    except Exception as err:  # ASE raises IndexError/ValueError on truncated or bad files
        raise ValueError(f"malformed EAM file {str(path)!r} (form {form!r}): {type(err).__name__}: {err}") from err
    return eam_from_tables(
        species=list(parsed.elements),
        dr=parsed.dr,
        drho=parsed.drho,
        cutoff=parsed.cutoff,
        rphi=parsed.rphi_data,
        density=parsed.density_data,
        embedding=parsed.embedded_data,
        form=form,
        source=path.name,
        masses=[float(m) for m in parsed.mass],
    )


def eam_from_tables(species, dr, drho, cutoff, rphi, density, embedding, form="alloy", source="tables",
                    masses=None) -> EAM:
    """Build an :class:`EAM` from tables on the grids r_k = k dr, ρ_k = k drho.

    Arguments:
        species: S element names.
        rphi: ``(S, S, n_r)`` r·φ_ab(r) in eV·Å (only ``a <= b`` need be filled; it is
            symmetrised from the upper triangle as LAMMPS files store it).
        density: ``(S, n_r)`` f_b(r) for setfl files, or ``(S, S, n_r)`` f[source, host]
            for Finnis–Sinclair files.
        embedding: ``(S, n_rho)`` F_a(ρ) in eV.
        masses: optional ``(S,)`` atomic masses in amu (the kinetic term of the free energy).
    """
    species = tuple(species)
    n = len(species)
    rphi = np.asarray(rphi, dtype=float)
    density = np.asarray(density, dtype=float)
    embedding = np.asarray(embedding, dtype=float)
    n_r = rphi.shape[-1]
    if rphi.shape != (n, n, n_r):
        raise ValueError(f"rphi must have shape ({n}, {n}, n_r); got {rphi.shape}")
    upper = np.triu(np.ones((n, n), dtype=bool))
    rphi = np.where(upper[..., None], rphi, np.swapaxes(rphi, 0, 1))
    if density.shape == (n, n_r):
        density = np.broadcast_to(density[:, None, :], (n, n, n_r))
    if density.shape != (n, n, n_r):
        raise ValueError(f"density must have shape ({n}, n_r) or ({n}, {n}, n_r); got {density.shape}")
    if embedding.ndim != 2 or embedding.shape[0] != n:
        raise ValueError(f"embedding must have shape ({n}, n_rho); got {embedding.shape}")
    for name, table in (("rphi", rphi), ("density", density), ("embedding", embedding)):
        if not np.all(np.isfinite(table)):
            raise ValueError(f"EAM table {name!r} from {source!r} has non-finite values")
    radial = np.stack([rphi, density], axis=0)  # (2, S, S, n_r)
    radial = np.moveaxis(radial, -1, 0)  # (n_r, 2, S, S)
    return EAM(
        radial_spline=UniformCubicSpline.fit(0.0, float(dr), radial),
        embedding_spline=UniformCubicSpline.fit(0.0, float(drho), embedding.T),
        species=species,
        cutoff=float(cutoff),
        form=form,
        source=str(source),
        masses=None if masses is None else tuple(float(m) for m in masses),
    )
