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
from typing import NamedTuple, Optional

import equinox as eqx
from jaxtyping import Array, Float


class RadialTerms(NamedTuple):
    """Radial functions at distances r (shape ``r.shape + (S, S)`` each).

    Attributes:
        pair: φ_ab(r), eV (symmetric in a, b).
        density: f_{b→a}(r) indexed ``[..., source b, host a]``; None for pair potentials.
    """

    pair: Float[Array, "... s s"]
    density: Optional[Float[Array, "... s s"]]


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

    @abc.abstractmethod
    def radial(self, r: Float[Array, "..."]) -> RadialTerms:
        """All radial functions at distances ``r`` (Å); zero for ``r >= cutoff``."""

    def embedding(self, density: Float[Array, "... s"]) -> Float[Array, "... s"]:
        """Embedding energies F_a(ρ_a), eV, one per host species (EAM only)."""
        raise NotImplementedError(f"{type(self).__name__} has no embedding term")

    def species_index(self, name: str) -> int:
        """Index of species ``name``; ``ValueError`` naming it when absent."""
        if name not in self.species:
            raise ValueError(f"species {name!r} not in the potential's species {list(self.species)}")
        return self.species.index(name)
