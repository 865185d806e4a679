#!/usr/bin/env bash
# Every GPU measurement of the hot path (issue 25) and the EAM sampler (issue 29) in one short call, for the moment a GPU is lent:
# the benchmark (scripts/bench_hot_path.py) at 1e5, 1e6 and 1e7 atoms in float32, then the tests a
# GPU can break (the analytic-gradient sums and the neighbour search), in well under 8 minutes.
# Without a GPU it runs the same steps at reduced size on the CPU (how it is tested):
#
#     bash scripts/gpu_check.sh            # output in $OUT (default /tmp/gpu_check)
#     REPEATS="6 10" bash scripts/gpu_check.sh
#
# Copy the tables it prints into docs/benchmarks.md with the device named.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
backend=$(python -c "import jax; print(jax.default_backend())")
if [ "$backend" = "gpu" ] || [ "$backend" = "cuda" ]; then
    default_repeats="29 63 136"  # 97 556, 1 000 188 and 10 061 824 atoms
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
else
    default_repeats="6 10"       # CPU smoke test: 864 and 4 000 atoms
    echo "no GPU (backend: $backend): reduced sizes on the CPU" | tee "$OUT/device.txt"
fi
REPEATS=${REPEATS:-$default_repeats}
start=$(date +%s)
# shellcheck disable=SC2086  # REPEATS is a list of sizes
python scripts/bench_hot_path.py --repeats $REPEATS --dtype float32 --trials 3 --skip lammps \
    --json "$OUT/hot_path_float32.json" 2>&1 | grep -v -i "warn\|^ *ind = \|^ *truncated_ind\|^ *return " \
    | tee "$OUT/hot_path_float32.txt"
# The spin-diffusion sampler with EAM on the surface slab (issue 29): candidates per second.
if [ "$backend" = "gpu" ] || [ "$backend" = "cuda" ]; then sampler_replicas="8 64 512"; else sampler_replicas="8"; fi
# shellcheck disable=SC2086
python scripts/bench_sampler.py --eam --eam-replicas $sampler_replicas --repeats 2 \
    --json "$OUT/sampler_eam.json" 2>&1 | tee "$OUT/sampler_eam.txt"
python -m pytest -q -x -p no:cacheprovider tests/test_pair_sums.py tests/test_neighbors.py 2>&1 | tail -3 \
    | tee "$OUT/tests.txt"
echo "gpu_check: $(( $(date +%s) - start )) s; results in $OUT" | tee -a "$OUT/device.txt"
