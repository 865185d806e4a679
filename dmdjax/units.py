"""Units: dmdjax works in LAMMPS *metal* units.

Energy in eV, length in Å, temperature in K, stress in eV/Å³ (multiply by
:data:`EV_PER_A3_TO_GPA` for GPa). Kinetic time is in the unit of the kinetic law
(the inverse of its rate constant), see DESIGN.md §4.
"""

from __future__ import annotations

import numpy as np

from . import _validate

#: Boltzmann constant in eV/K (CODATA 2018, exact in SI).
BOLTZMANN_EV_PER_K = 8.617333262e-5
#: Alias of :data:`BOLTZMANN_EV_PER_K`.
KB = BOLTZMANN_EV_PER_K
#: 1 eV/Å³ in GPa.
EV_PER_A3_TO_GPA = 160.21766208


def beta_from_temperature(temperature):
    """Inverse temperature β = 1/(k_B T) in 1/eV.

    Arguments:
        temperature: T in K, a positive scalar or array (Python or NumPy value;
            validated, so not for use on traced values).

    Returns:
        β with the shape of ``temperature``.

    Raises:
        ValueError: if any T is not finite or not positive.
    """
    _validate.temperature(temperature)
    return 1.0 / (BOLTZMANN_EV_PER_K * np.asarray(temperature, dtype=float))
