r"""The DMD state (X, k, s): mean positions, Gaussian stiffnesses and species order parameters.

One small immutable pytree that every state-taking function of dmdjax accepts and returns
(the free energy, :func:`dmdjax.relax`, :mod:`dmdjax.dmd`, trajectories, the sampler's
Gaussian mode), so that k and s — both ``(N,)`` floats — cannot be swapped silently.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import _validate


class DMDState(eqx.Module):
    r"""The variational state of DMD (DESIGN.md §2): site i's position is a Gaussian
    N(X_i, (β k_i)⁻¹ I_d) and its species is A with probability c_i = (1 + s_i)/2.

    Attributes:
        positions: mean positions X, ``(..., N, d)`` Å.
        stiffness: Gaussian stiffnesses k, ``(..., N)`` eV/Å² (> 0; ignored on pinned atoms), or
            ``(..., N, 2)`` with one width per site and species (``VGFreeEnergy(widths="species")``).
        order_parameter: species order parameters s, ``(..., N)``, in [−1, 1] (strictly inside
            except on a free energy's pinned-species sites, which
            :meth:`~dmdjax.VGFreeEnergy.check` enforces).

    Leading axes (``...``) are batch or time axes: a :class:`~dmdjax.dmd.Trajectory` holds its
    states stacked along time, and ``state[i]`` picks one.

    Constructed from concrete arrays (outside ``jit``), the state is validated: shapes agree,
    every value is finite, k > 0 and |s| ≤ 1, else ``ValueError`` naming the bad value.
    Inside ``jit`` or ``vmap`` (traced arrays) nothing is checked; JAX's own pytree
    reconstruction never re-validates.
    """

    positions: Float[Array, "*batch n d"]
    stiffness: Float[Array, "*batch n"] | Float[Array, "*batch n 2"]
    order_parameter: Float[Array, "*batch n"]

    def __check_init__(self):
        shapes = tuple(np.shape(a) for a in (self.positions, self.stiffness, self.order_parameter))
        x, k, s = shapes
        if len(x) < 2 or k not in (x[:-1], x[:-1] + (2,)) or s != x[:-1]:
            raise ValueError("DMDState needs positions (..., N, d) with stiffness (..., N) or (..., N, 2) and "
                             "order_parameter (..., N); got "
                             f"positions {x}, stiffness {k}, order_parameter {s}")
        for name in ("positions", "stiffness", "order_parameter"):
            dtype = jnp.result_type(getattr(self, name))
            if not jnp.issubdtype(dtype, jnp.floating):
                raise ValueError(f"DMDState.{name} must be a floating-point array; got dtype {dtype}")
        if not _validate.is_concrete((self.positions, self.stiffness, self.order_parameter)):
            return
        _validate.finite(self.positions, "positions")
        _validate.stiffness(self.stiffness)
        s = _validate.host_array(self.order_parameter, dtype=float)
        bad = ~np.isfinite(s) | (np.abs(s) > 1)
        if np.any(bad):
            raise ValueError("order_parameter must lie in [-1, 1] (strictly inside except on pinned species); got "
                             + _validate.first_bad(s, bad))

    @property
    def n_sites(self) -> int:
        """N."""
        return self.order_parameter.shape[-1]

    @property
    def dtype(self):
        """The dtype of the positions."""
        return jnp.result_type(self.positions)

    def __getitem__(self, index) -> "DMDState":
        """The state(s) at ``index`` of the leading (batch or time) axes."""
        if np.ndim(self.order_parameter) < 2:
            raise IndexError("DMDState[...] indexes the leading axes of a stacked state; this one has none")
        return jax.tree_util.tree_map(lambda a: a[index], self)

    def replace(self, **fields) -> "DMDState":
        """A copy with some of ``positions``, ``stiffness``, ``order_parameter`` replaced
        (validated like a new state)."""
        unknown = set(fields) - {"positions", "stiffness", "order_parameter"}
        if unknown:
            raise TypeError(f"DMDState has no field(s) {sorted(unknown)}")
        values = {name: getattr(self, name) for name in ("positions", "stiffness", "order_parameter")}
        values.update(fields)
        return DMDState(**values)


class HoldsState(eqx.Module):
    """Base of results that hold a :class:`DMDState` in their ``state`` field (relaxations,
    trajectories, solutions, equilibria): ``positions``, ``stiffness`` and ``order_parameter``
    are shortcuts for the state's fields."""

    @property
    def positions(self) -> Float[Array, "*batch n d"]:
        return self.state.positions

    @property
    def stiffness(self) -> Float[Array, "*batch n"]:
        return self.state.stiffness

    @property
    def order_parameter(self) -> Float[Array, "*batch n"]:
        return self.state.order_parameter
