"""Units: dmdjax works in LAMMPS *metal* units.

Energy in eV, length in Å, temperature in K, stress in eV/Å³ (multiply by
:data:`EV_PER_A3_TO_GPA` for GPa). Kinetic time is in the unit of the kinetic law
(the inverse of its rate constant), see DESIGN.md §4.
"""

from __future__ import annotations

import jax.numpy as jnp

from . import _validate

#: Boltzmann constant in eV/K (CODATA 2018, exact in SI).
BOLTZMANN_EV_PER_K = 8.617333262e-5
#: Alias of :data:`BOLTZMANN_EV_PER_K`.
KB = BOLTZMANN_EV_PER_K
#: 1 eV/Å³ in GPa.
EV_PER_A3_TO_GPA = 160.21766208
#: Planck constant h in eV·fs (exact in SI since 2019).
PLANCK_EV_FS = 4.135667696923859
#: 1 atomic mass unit (dalton) in eV·fs²/Å² (CODATA 2018).
AMU_EV_FS2_PER_A2 = 103.64269652680504


def beta_from_temperature(temperature):
    """Inverse temperature β = 1/(k_B T) in 1/eV — the one place dmdjax converts T to β.

    Arguments:
        temperature: T in K, a positive scalar or array; traced values are allowed (inside
            ``jit``/``grad``; then not validated), concrete ones are validated.

    Returns:
        β with the shape (and floating dtype) of ``temperature``.

    Raises:
        ValueError: if a concrete T is not finite or not positive.
    """
    _validate.temperature(temperature)
    return 1.0 / (BOLTZMANN_EV_PER_K * _as_float(temperature))


def thermal_energy(temperature):
    """k_B T in eV (the inverse of :func:`beta_from_temperature`); validated like it."""
    _validate.temperature(temperature)
    return BOLTZMANN_EV_PER_K * _as_float(temperature)


def temperature_from_thermal_energy(kt):
    """T = k_B T / k_B in K, for inputs given as k_B T in eV (the chain study's ``kt``)."""
    _validate.positive(kt, "k_B T", " eV")
    return _as_float(kt) / BOLTZMANN_EV_PER_K


def temperature_from_beta(beta):
    """T = 1/(k_B β) in K, the inverse of :func:`beta_from_temperature`."""
    _validate.positive(beta, "beta", " (1/eV)")
    return 1.0 / (BOLTZMANN_EV_PER_K * _as_float(beta))


def thermal_wavelength(mass, temperature):
    """The thermal de Broglie wavelength Λ = h/√(2π m k_B T) in Å, for ``mass`` in amu and T in K
    (arrays broadcast; traced values allowed). In d dimensions a classical particle's momenta
    contribute d k_B T ln Λ to its free energy (the kinetic term of the VG free energy)."""
    _validate.temperature(temperature)
    mass = _as_float(mass)
    energy = BOLTZMANN_EV_PER_K * _as_float(temperature)
    return PLANCK_EV_FS / jnp.sqrt(2.0 * jnp.pi * mass * AMU_EV_FS2_PER_A2 * energy)


def _as_float(value):
    value = jnp.asarray(value)
    return value if jnp.issubdtype(value.dtype, jnp.floating) else value.astype(float)
