"""SB-SAM: a score model of a small inner region conditioned on deformation and temperature (DESIGN.md §7).

Modules: :mod:`~dmdjax.sbsam.harmonic` (the exact Gaussian oracle), :mod:`~dmdjax.sbsam.losses`
(implicit, Hutchinson, sliced, denoising score matching and force matching),
:mod:`~dmdjax.sbsam.model` (the conditional score network), :mod:`~dmdjax.sbsam.train`
(fitting it with optax) and :mod:`~dmdjax.sbsam.sample` (Langevin sampling of the inner region).
"""

from . import harmonic, losses, model, sample, train

__all__ = ["harmonic", "losses", "model", "sample", "train"]
