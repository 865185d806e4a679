"""The 6-site chain of tests/test_dmd.py, importable by the tests and by their subprocesses.

A Lennard-Jones chain with weak A–B chemistry at k_B T = 0.2 eV, first site pinned in place
and species (s = +1), in float64.
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

import dmdjax as dj  # noqa: E402

KT = 0.2
N_SITES = 6
POTENTIAL = dj.LennardJones([[1.0, 0.9], [0.9, 0.9]], [[1.0, 1.05], [1.05, 1.1]], species=("A", "B"), cutoff=2.6)
CHAIN = dj.systems.chain(N_SITES, 1.05, pinned=[0])
VG = dj.VGFreeEnergy(POTENTIAL, CHAIN.cell, dj.units.temperature_from_thermal_energy(KT), N_SITES,
                     pinned=CHAIN.pinned, pinned_species=CHAIN.pinned)
# The chain stretches by up to 0.85 Å as it relaxes and the species move, more when hotter: a
# 4 Å skin lists every pair of the 6 sites, so the pure solve (which cannot rebuild a list inside
# jit) stays valid at every temperature the tests use.
NEIGHBORS = VG.neighbor_list(CHAIN.positions, skin=4.0)
S0 = (jnp.linspace(0.5, -0.5, N_SITES) + 0.1).at[0].set(1.0)  # the pinned site is pure A
STATE = VG.initial_state(CHAIN.positions, S0, NEIGHBORS)
