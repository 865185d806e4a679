"""Could ⟨g⟩(R, v) be tabulated? Bicubic (R, v) tables against the direct Gauss–Hermite rule.

Issue 25 proposed to replace the quadrature nodes of every pair by one lookup in a 2-D table of
⟨g⟩(R, v) per radial function (v = pair variance, Å²): a bicubic Hermite interpolant built from
the rule's own values and derivatives ∂_R, ∂_v, ∂²_{Rv} at the grid nodes (autodiff of the
rule; ∂_v at v = 0 as the limit ½ ∂²_σ). This script builds such tables for the Mendelev Al–Mg
EAM in 3-D and prints the largest interpolation error against the direct rule in bands of v,
relative to the largest |value| in the band, for values, ∂_R and ∂_v, R ∈ [2.5, 9] Å:

    python scripts/average_table_accuracy.py --spacings 0.01,0.02 0.01,0.005 0.005,0.001

Outcome (docs/quadrature.md): the potential's functions are cubic splines with knots (jumps of
the third derivative) whose Gaussian average varies on the scale σ around each knot, which is
not analytic in v as v → 0; so the errors stay at 1e-4 to 1e-3 for v below 0.02 Å² (the solid
at 300-600 K) even at h_v = 0.001 Å², far from the 1e-6 wanted, while such grids take 10⁸
bytes. dmdjax keeps the direct rule, fused with its analytic derivatives (dmdjax.pair_sums).
"""

import argparse

import math

from dmdjax.quadrature import points_at_sigma, reach_factor

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


#: Default grid spacings (Å, Å²) and largest pair variance (Å²) of a table.
R_SPACING, V_SPACING, MAX_VARIANCE = 0.01, 0.02, 0.5

# Cubic Hermite basis on [0, 1]: coefficients of 1, t, t², t³ from (p(0), p(1), p'(0), p'(1)).
_HERMITE = np.array([[1.0, 0.0, 0.0, 0.0],
                     [0.0, 0.0, 1.0, 0.0],
                     [-3.0, 3.0, -2.0, -1.0],
                     [2.0, -2.0, 1.0, 1.0]])


class AverageTable(eqx.Module):
    """Bicubic tables of ⟨g⟩(R, v) for all radial functions of a potential (module docstring).

    Attributes:
        coefficients: ``(r_cells · v_cells, 16 · T · S · S)``: per grid cell, the polynomial
            coefficients ``[q, p, term]`` of ``Σ_pq c t^p u^q`` with t, u ∈ [0, 1] the cell's
            local coordinates along R and v (one contiguous row per cell: one gather per pair).
        r_start, r_spacing, v_spacing: grid origin and spacings (Å, Å, Å²).
        r_cells, v_cells: number of cells along R and v.
        shape: ``(T, S, S)``, the potential's radial block.
        dim, rule, nodes: the dimension and quadrature rule the table reproduces.
    """

    coefficients: Float[Array, "cells c"]
    r_start: float = eqx.field(static=True)
    r_spacing: float = eqx.field(static=True)
    v_spacing: float = eqx.field(static=True)
    r_cells: int = eqx.field(static=True)
    v_cells: int = eqx.field(static=True)
    shape: tuple[int, int, int] = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    rule: str = eqx.field(static=True)
    nodes: int = eqx.field(static=True)

    @property
    def max_distance(self) -> float:
        """R beyond which every average is zero (Å)."""
        return self.r_start + self.r_spacing * self.r_cells

    @property
    def max_variance(self) -> float:
        """The largest pair variance the table covers (Å²)."""
        return self.v_spacing * self.v_cells

    def __call__(self, distance: Float[Array, "..."], variance: Float[Array, "..."], derivatives: bool = False):
        """⟨g⟩ of every radial function at (R, v), shape ``R.shape + (T, S, S)``; zero for R ≥
        :attr:`max_distance`. With ``derivatives``: ``(values, ∂_R values, ∂_v values)``.

        Variances past :attr:`max_variance` use the last cell's polynomial: callers check them
        with :meth:`check_variance`."""
        dtype = distance.dtype
        n_terms = math.prod(self.shape)
        coefficients = self.coefficients.astype(dtype)
        scaled_r = (distance - self.r_start) / self.r_spacing
        cell_r = jnp.clip(jnp.floor(scaled_r), 0, self.r_cells - 1)
        t = (scaled_r - cell_r)[..., None]
        scaled_v = variance / self.v_spacing
        cell_v = jnp.clip(jnp.floor(scaled_v), 0, self.v_cells - 1)
        u = (scaled_v - cell_v)[..., None, None]
        row = (cell_r * self.v_cells + cell_v).astype(jnp.int32)
        c = coefficients[row].reshape(distance.shape + (4, 4, n_terms))  # [..., q, p, term]
        # Horner in u (per power p of t), then in t.
        b = ((c[..., 3, :, :] * u + c[..., 2, :, :]) * u + c[..., 1, :, :]) * u + c[..., 0, :, :]
        inside = (distance < self.max_distance)[..., None]

        def finish(x):
            return jnp.where(inside, x, 0.0).reshape(distance.shape + self.shape)

        values = finish(((b[..., 3, :] * t + b[..., 2, :]) * t + b[..., 1, :]) * t + b[..., 0, :])
        if not derivatives:
            return values
        d_r = finish(((3.0 * b[..., 3, :] * t + 2.0 * b[..., 2, :]) * t + b[..., 1, :]) / self.r_spacing)
        db = (3.0 * c[..., 3, :, :] * u + 2.0 * c[..., 2, :, :]) * u + c[..., 1, :, :]
        d_v = finish((((db[..., 3, :] * t + db[..., 2, :]) * t + db[..., 1, :]) * t + db[..., 0, :])
                     / self.v_spacing)
        return values, d_r, d_v


def rule_average(potential, distance: Array, sigma: Array, dim: int, rule: str, nodes: int) -> Array:
    """⟨g⟩ of every radial function by the quadrature rule, at pair standard deviation σ = √v
    (differentiable in σ at σ = 0, unlike a function of v): shape ``R.shape + (T, S, S)``."""
    r_q, f_q = points_at_sigma(distance, sigma, dim, rule, nodes)
    return jnp.sum(f_q[..., None, None, None] * potential.radial(r_q), axis=-4)


def build_average_table(
    potential,
    dim: int,
    rule: str = "gauss-hermite",
    nodes: int = 8,
    *,
    max_variance: float = MAX_VARIANCE,
    r_spacing: float = R_SPACING,
    v_spacing: float = V_SPACING,
) -> AverageTable:
    """Tabulate ⟨g⟩(R, v) of every radial function of ``potential`` (module docstring).

    Arguments:
        potential: the potential (its parameters may be traced: the build is differentiable).
        dim, rule, nodes: the dimension and quadrature rule of the free energy.
        max_variance: the largest pair variance covered, Å² (> 0).
        r_spacing, v_spacing: grid spacings, Å and Å² (> 0).
    """
    for name, value in (("max_variance", max_variance), ("r_spacing", r_spacing), ("v_spacing", v_spacing)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be finite and > 0; got {value!r}")
    cutoff = float(potential.cutoff)
    r_start = 0.05 * cutoff
    r_end = cutoff + reach_factor(dim, rule, nodes) * math.sqrt(max_variance)
    r_cells = int(math.ceil((r_end - r_start) / r_spacing))
    v_cells = max(1, int(math.ceil(max_variance / v_spacing - 1e-9)))
    dtype = jnp.result_type(float)
    distance = jnp.asarray(r_start + r_spacing * np.arange(r_cells + 1), dtype)[:, None]
    sigma = jnp.sqrt(jnp.asarray(v_spacing * np.arange(v_cells + 1), dtype))[None, :]
    distance, sigma = jnp.broadcast_arrays(distance, sigma)
    node_data = _node_data(potential, distance, sigma, dim, rule, nodes)  # (4, nr, nv, T, S, S)
    shape = node_data.shape[3:]
    node_data = node_data.reshape(node_data.shape[:3] + (-1,))
    f, f_r, f_v, f_rv = node_data[0], node_data[1] * r_spacing, node_data[2] * v_spacing, \
        node_data[3] * (r_spacing * v_spacing)
    lo, hi = slice(None, -1), slice(1, None)
    # data[i, j]: i over (value at t=0, value at t=1, ∂_t at 0, ∂_t at 1), j likewise along u.
    data = jnp.stack([
        jnp.stack([f[lo, lo], f[lo, hi], f_v[lo, lo], f_v[lo, hi]]),
        jnp.stack([f[hi, lo], f[hi, hi], f_v[hi, lo], f_v[hi, hi]]),
        jnp.stack([f_r[lo, lo], f_r[lo, hi], f_rv[lo, lo], f_rv[lo, hi]]),
        jnp.stack([f_r[hi, lo], f_r[hi, hi], f_rv[hi, lo], f_rv[hi, hi]]),
    ])  # (4, 4, r_cells, v_cells, F)
    hermite = jnp.asarray(_HERMITE, dtype)
    coefficients = jnp.einsum("pi,ijklf,qj->klqpf", hermite, data, hermite, precision=jax.lax.Precision.HIGHEST)
    coefficients = coefficients.reshape(r_cells * v_cells, -1)
    return AverageTable(coefficients, float(r_start), float(r_spacing), float(v_spacing),
                        r_cells, v_cells, tuple(int(n) for n in shape), int(dim), rule, int(nodes))


def _node_data(potential, distance, sigma, dim, rule, nodes) -> Array:
    """(⟨g⟩, ∂_R, ∂_v, ∂²_{Rv}) at the grid nodes, stacked on a leading axis."""
    one = jnp.ones_like(distance)

    def with_r(s):
        return jax.jvp(lambda r: rule_average(potential, r, s, dim, rule, nodes), (distance,), (one,))

    def with_sigma(s):
        return jax.jvp(with_r, (s,), (one,))

    ((f, f_r), (f_s, f_rs)), (_, (f_ss, f_rss)) = jax.jvp(with_sigma, (sigma,), (one,))
    # v = σ²: ∂_v = ∂_σ / (2σ), and ½ ∂²_σ in the limit σ → 0 (the rule is even in σ).
    positive = (sigma > 0)[..., None, None, None]
    two_sigma = jnp.where(positive, 2.0 * sigma[..., None, None, None], 1.0)
    f_v = jnp.where(positive, f_s / two_sigma, 0.5 * f_ss)
    f_rv = jnp.where(positive, f_rs / two_sigma, 0.5 * f_rss)
    return jnp.stack([f, f_r, f_v, f_rv])


def main():
    jax.config.update("jax_enable_x64", True)
    import dmdjax as dj
    from dmdjax.quadrature import gaussian_average

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacings", nargs="+", default=["0.01,0.02", "0.01,0.005", "0.005,0.001"],
                        help="h_R,h_v pairs (Å, Å²)")
    parser.add_argument("--max-variance", type=float, default=0.3)
    args = parser.parse_args()
    potential = dj.load_eam("AlMg_Mendelev2009")
    rng = np.random.default_rng(0)
    bands = [(0.0, 0.005), (0.005, 0.02), (0.02, 0.05), (0.05, 0.15), (0.15, 0.3)]
    print("| h_R (Å) | h_v (Å²) | table (MB) | " + " | ".join(f"v ∈ [{a}, {b}]" for a, b in bands) + " |")
    print("| --- " * (3 + len(bands)) + "|")
    for pair in args.spacings:
        h_r, h_v = (float(x) for x in pair.split(","))
        table = build_average_table(potential, 3, r_spacing=h_r, v_spacing=h_v, max_variance=args.max_variance)
        cells = []
        for low, high in bands:
            if low >= table.max_variance:
                cells.append("—")
                continue
            distance = jnp.asarray(rng.uniform(2.5, 9.0, 20000))
            variance = jnp.asarray(rng.uniform(low, min(high, table.max_variance), 20000))
            reference = gaussian_average(potential, distance, variance, 3)
            d_r = jax.jvp(lambda r: gaussian_average(potential, r, variance, 3), (distance,),
                          (jnp.ones_like(distance),))[1]
            d_v = jax.jvp(lambda v: gaussian_average(potential, distance, v, 3), (variance,),
                          (jnp.ones_like(variance),))[1]
            got = table(distance, variance, derivatives=True)

            def worst(a, b):
                return float(jnp.max(jnp.max(jnp.abs(a - b), axis=0) / jnp.max(jnp.abs(b), axis=0)))

            cells.append(f"{worst(got[0], reference):.1e} / {worst(got[1], d_r):.1e} / {worst(got[2], d_v):.1e}")
        size = table.coefficients.nbytes / 1e6
        print(f"| {h_r} | {h_v} | {size:.0f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
