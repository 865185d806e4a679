"""SB-SAM: a score model of a small inner region conditioned on deformation and temperature (DESIGN.md §7).

Modules: :mod:`~dmdjax.sbsam.harmonic` (the exact Gaussian oracle), :mod:`~dmdjax.sbsam.losses`
(implicit, Hutchinson, sliced, denoising score matching and force matching).
"""

from . import harmonic, losses

__all__ = ["harmonic", "losses"]
