"""dmdjax: differentiable diffusive molecular dynamics in JAX."""

from . import cell, energy, io, neighbors, potentials, systems, units
from .cell import Cell, make_cell
from .energy import evaluate, forces, potential_energy, site_energies, stress
from .neighbors import NeighborList, neighbor_list
from .potentials import EAM, HarmonicBond, LennardJones, Morse, TabulatedPair, load_eam
from .systems import System, from_ase, make_system, to_ase
from .units import BOLTZMANN_EV_PER_K, beta_from_temperature

__version__ = "0.1.0"
from . import free_energy, kinetics
from .free_energy import VGFreeEnergy
from .relax import RelaxResult, initial_stiffness, relax
