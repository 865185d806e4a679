"""SB-SAM: a score model of a small inner region conditioned on deformation and temperature (DESIGN.md §7).

Modules: :mod:`~dmdjax.sbsam.lattice` (the triangular Morse lattice), :mod:`~dmdjax.sbsam.harmonic`
(the exact Gaussian oracle), :mod:`~dmdjax.sbsam.crystal` (the nonlinear crystal, sampled in full
by jax-md), :mod:`~dmdjax.sbsam.bcc` (3-D: bcc EAM crystal around a vacancy, its reference score,
thermal expansion and full sampler), :mod:`~dmdjax.sbsam.stress` (PK stresses), :mod:`~dmdjax.sbsam.losses`
(implicit, Hutchinson, sliced, denoising score matching and force matching),
:mod:`~dmdjax.sbsam.model` (the conditional score network), :mod:`~dmdjax.sbsam.train`
(fitting it with optax) and :mod:`~dmdjax.sbsam.sample` (Langevin sampling of the inner region).
"""

from . import bcc, crystal, harmonic, lattice, losses, model, sample, stress, train

__all__ = ["bcc", "crystal", "harmonic", "lattice", "losses", "model", "sample", "stress", "train"]
