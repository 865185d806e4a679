"""The interface every potential implements.

A potential of S species is described by its *radial functions* of a pair distance
r — the pair energies φ_ab(r) and, for EAM, the densities f_{b→a}(r) contributed by a
neighbour of species b at a host of species a — and, for EAM, the embedding energies
F_a(ρ). Keeping every species pair in trailing ``(S, S)`` axes lets the same code
evaluate the plain energy (one-hot species weights) and the species mean field of the
variational-Gaussian free energy (DESIGN.md §2), and lets a Gaussian average act on
all radial functions at once.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


#: Index of the pair energies φ_ab and of the densities f_{b→a} along the "term" axis.
PAIR, DENSITY = 0, 1


class Potential(eqx.Module):
    """Abstract base: a potential over ``species`` with a finite ``cutoff`` (Å)."""

    species: eqx.AbstractVar[tuple[str, ...]]
    cutoff: eqx.AbstractVar[float]

    @property
    def n_species(self) -> int:
        return len(self.species)

    @property
    def is_embedded(self) -> bool:
        """True for EAM-type potentials (a density and an embedding energy)."""
        return False

    @property
    def n_radial_terms(self) -> int:
        """T: 1 (pair energies) or 2 (pair energies and EAM densities)."""
        return 2 if self.is_embedded else 1

    @abc.abstractmethod
    def radial(self, r: Float[Array, "..."]) -> Float[Array, "... t s s"]:
        """All radial functions at distances ``r`` (Å), shape ``r.shape + (T, S, S)``; zero beyond the cut-off.

        Term 0 holds the pair energies φ_ab(r) (eV, symmetric); for EAM term 1 holds the
        densities indexed ``[source b, host a]``. Every term is contracted over its
        second-to-last axis with the neighbour's species weights.
        """

    def radial_and_derivative(self, r: Float[Array, "..."]) -> tuple[Array, Array]:
        """:meth:`radial` and its derivative d/dr, each ``r.shape + (T, S, S)``."""
        return jax.jvp(self.radial, (r,), (jnp.ones_like(r),))

    def species_radial(self, r: Float[Array, "..."], host, neighbor) -> tuple[Array, Array]:
        """The radial functions of one species pair per distance, with their derivatives d/dr:
        ``(values, slopes)``, each ``r.shape + (P,)`` with P = 1 (φ_{host,neighbor}) or, for
        EAM, 3 (φ_{host,neighbor}, f_{neighbor→host}, f_{host→neighbor}).

        ``host`` and ``neighbor`` are integer species of ``r``'s shape. The plain energy of
        integer species needs only these, not the whole ``(T, S, S)`` block."""
        values, slopes = self.radial_and_derivative(r)

        def pick(block):
            pair = _entry(block[..., PAIR, :, :], host, neighbor)[..., None]
            if not self.is_embedded:
                return pair
            density = block[..., DENSITY, :, :]
            return jnp.concatenate([pair, _entry(density, neighbor, host)[..., None],
                                    _entry(density, host, neighbor)[..., None]], axis=-1)

        return pick(values), pick(slopes)

    def pair(self, r: Float[Array, "..."]) -> Float[Array, "... s s"]:
        """Pair energies φ_ab(r), eV."""
        return self.radial(r)[..., PAIR, :, :]

    def density(self, r: Float[Array, "..."]) -> Float[Array, "... s s"]:
        """EAM densities f_{b→a}(r) indexed ``[..., source b, host a]``."""
        if not self.is_embedded:
            raise NotImplementedError(f"{type(self).__name__} has no density term")
        return self.radial(r)[..., DENSITY, :, :]

    def embedding(self, density: Float[Array, "... s"]) -> Float[Array, "... s"]:
        """Embedding energies F_a(ρ_a), eV, one per host species (EAM only)."""
        raise NotImplementedError(f"{type(self).__name__} has no embedding term")

    def species_index(self, name: str) -> int:
        """Index of species ``name``; ``ValueError`` naming it when absent."""
        if name not in self.species:
            raise ValueError(f"species {name!r} not in the potential's species {list(self.species)}")
        return self.species.index(name)


def _entry(block, first, second):
    """``block[..., first, second]`` for integer arrays ``first``, ``second`` of the leading shape."""
    n = block.shape[-1]
    flat = block.reshape(block.shape[:-2] + (n * n,))
    return jnp.take_along_axis(flat, (first * n + second)[..., None], axis=-1)[..., 0]
