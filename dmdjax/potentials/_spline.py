"""Cubic splines on a uniform grid, evaluated in JAX.

Coefficients are computed once on the host (SciPy's not-a-knot ``CubicSpline``, the
same interpolant as FITPACK's ``k=3`` interpolating spline that ASE and LAMMPS-class
codes use) and stored as ``(n_intervals, *batch, 4)`` so that one gather fetches every
tabulated function at a grid point: a single memory access per pair of atoms.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float
from scipy.interpolate import CubicSpline


class UniformCubicSpline(eqx.Module):
    """A batch of cubic splines on the grid ``x_k = x0 + k * dx``.

    ``spline(x)`` returns shape ``x.shape + batch``. Outside the grid the end cubics
    are extrapolated; callers apply their own cut-offs.

    Attributes:
        coefficients: ``(n_intervals, *batch, 4)``; on interval k,
            ``y = c0 + c1 t + c2 t² + c3 t³`` with ``t = x - x_k``.
        x0, dx: grid origin and spacing (static).
    """

    coefficients: Float[Array, "n ... 4"]
    x0: float = eqx.field(static=True)
    dx: float = eqx.field(static=True)

    @classmethod
    def fit(cls, x0: float, dx: float, values: np.ndarray) -> "UniformCubicSpline":
        """Interpolate ``values`` of shape ``(n_points, *batch)`` on the uniform grid."""
        values = np.asarray(values, dtype=float)
        if values.shape[0] < 4:
            raise ValueError(f"a cubic spline needs at least 4 grid points; got {values.shape[0]}")
        x = x0 + dx * np.arange(values.shape[0])
        c = CubicSpline(x, values, axis=0, bc_type="not-a-knot").c  # (4, n-1, *batch), highest power first
        coefficients = np.moveaxis(c[::-1], 0, -1)  # (n-1, *batch, 4), lowest power first
        return cls(jnp.asarray(coefficients), float(x0), float(dx))

    @property
    def n_intervals(self) -> int:
        return self.coefficients.shape[0]

    @property
    def x_max(self) -> float:
        return self.x0 + self.dx * self.n_intervals

    def _interval(self, x):
        coefficients = self.coefficients.astype(x.dtype)
        u = (x - self.x0) / self.dx
        k = jnp.clip(jnp.floor(u), 0, self.n_intervals - 1)
        t = (u - k) * self.dx
        c = coefficients[k.astype(jnp.int32)]  # x.shape + batch + (4,)
        return c, t.reshape(t.shape + (1,) * (c.ndim - t.ndim - 1))

    def __call__(self, x: Float[Array, "..."]) -> Float[Array, "... *batch"]:
        c, t = self._interval(x)
        return c[..., 0] + t * (c[..., 1] + t * (c[..., 2] + t * c[..., 3]))

    def value_and_derivative(self, x: Float[Array, "..."]) -> tuple[Array, Array]:
        """The splines and their first derivatives at ``x``, from one gather of coefficients."""
        c, t = self._interval(x)
        value = c[..., 0] + t * (c[..., 1] + t * (c[..., 2] + t * c[..., 3]))
        return value, c[..., 1] + t * (2.0 * c[..., 2] + 3.0 * t * c[..., 3])
