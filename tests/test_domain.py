"""Atom-sharded evaluation (dmdjax.domain): the same results on one device, on 8 fake CPU devices
and on two jax.distributed processes of two CPU devices each. The sharded runs need their own
processes (the device count is fixed when JAX starts): each check runs tests/sharded_worker.py."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import dmdjax as dj
from dmdjax import domain

WORKER = Path(__file__).with_name("sharded_worker.py")
#: Each worker's wall-clock limit, s (a hung collective must not hang the suite).
LIMIT = 1800  # s per worker: a guard against hangs (the 8-device check: 13 min alone on the 2-core machine, 2026-12-03)


def _environment(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _run_worker(devices: int, *arguments) -> dict:
    done = subprocess.run([sys.executable, str(WORKER), *arguments], env=_environment(devices), capture_output=True,
                          text=True, timeout=LIMIT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_processes(processes: int, devices: int, *arguments) -> list[dict]:
    """``processes`` workers joined by jax.distributed on localhost; all are killed on a timeout
    or a failure of any."""
    address = f"localhost:{_free_port()}"
    started = [subprocess.Popen([sys.executable, str(WORKER), *arguments, "--coordinator", address,
                                 "--processes", str(processes), "--process-id", str(i)],
                                env=_environment(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(processes)]
    try:
        outputs = [p.communicate(timeout=LIMIT) for p in started]
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(started, outputs):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]


@pytest.mark.slow
def test_eight_devices_match_one():
    """A 10⁴-atom Al–Mg slab: plain E + F, the list searched again, VG F + ∇F, an (X, k)
    relaxation and a short K3 run (dmd.run; dmd.solve sharded against dmd.run on one device) agree
    sharded over 8 devices and on one (relative 1e-10). The worker reports each phase's seconds."""
    out = _run_worker(8, "--checks", "energy,free_energy,relax,k3")
    assert out["devices"] == 8 and out["n"] >= 10_000
    for name in ("energy", "free_energy", "relax", "k3", "solve"):
        assert out[name] <= 1e-10, (name, out)
    assert out["k3_change"] > 1e-3  # the run moved s
    assert out["update_differs"] == 0 and out["update_overflow"] == [False, False]  # the list searched sharded


@pytest.mark.slow
def test_two_processes_match_one():
    """Two jax.distributed processes × 2 CPU devices (gloo collectives) give one process's F + ∇F
    and relaxation."""
    outputs = _run_processes(2, 2, "--repeats", "5", "5", "16", "--checks", "free_energy,relax")
    for out in outputs:
        assert out["devices"] == 4 and out["processes"] == 2
        assert out["free_energy"] <= 1e-10 and out["relax"] <= 1e-10, out


def test_slabs_and_halo(mendelev):
    """spatial_order puts the atoms in slabs; a list whose pairs reach past the adjacent slab is
    refused; N not divisible by P is refused."""
    system = dj.systems.fcc(4.05, (4, 4, 12), pbc=(True, True, False))
    positions = np.asarray(system.positions)
    order = domain.spatial_order(positions, system.cell, 4)
    z = positions[order, 2].reshape(4, -1)
    assert np.all(z[:-1].max(axis=1) <= z[1:].min(axis=1))  # slab p below slab p + 1
    nbrs = dj.neighbor_list(positions[order], system.cell, mendelev.cutoff)
    assert not np.any(domain.outside_halo(nbrs.idx, 4))
    assert np.any(domain.outside_halo(nbrs.idx, 16))  # slabs of 1.5 layers (3 Å) and an 8 Å range
    shuffled = dj.neighbor_list(positions, system.cell, mendelev.cutoff)
    assert np.any(domain.outside_halo(shuffled.idx, 4))  # not in spatial order
    one = domain.decomposition(1)
    with pytest.raises(ValueError, match="divisible"):
        one.check_size(0)
    assert domain.tag(nbrs, one).decomposition.mesh == one.mesh
    # Four slabs of three layers (6 Å) and an 8 Å range: pairs reach 2 of the 3 layers of the next slab.
    depth = domain.halo_depth(nbrs.idx, 4)
    assert 32 < depth <= 96 and domain.halo_depth(nbrs.idx, 16) == -1
    assert not np.any(domain.outside_halo(nbrs.idx, 4, depth))
    assert np.any(domain.outside_halo(nbrs.idx, 4, depth - 1))
    with pytest.raises(ValueError, match="between 1 and"):
        domain.decomposition(len(jax.devices()) + 1)


def test_one_device_mesh_is_the_plain_path(mendelev):
    """The shard_map path on a one-device mesh gives the same VG F + ∇F and E + F as no mesh; plan()
    with one visible device keeps one device."""
    system = dj.systems.fcc(4.05, (5, 5, 4), pbc=(True, True, False))
    positions = np.asarray(system.positions)
    n = positions.shape[0]
    rng = np.random.default_rng(1)
    x = jax.numpy.asarray(positions + rng.normal(0, 0.05, positions.shape))
    vg = dj.VGFreeEnergy(mendelev, system.cell, 500.0, n)
    state = dj.DMDState(x, jax.numpy.full((n,), 4.0), jax.numpy.asarray(rng.uniform(-0.5, 0.9, n)))
    nbrs = vg.neighbor_list(x, state.stiffness)
    tagged = domain.tag(nbrs, domain.decomposition(1))
    value_and_grad = jax.value_and_grad(lambda st, nl: vg(st, nl))
    plain, sharded = value_and_grad(state, nbrs), value_and_grad(state, tagged)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(sharded)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-13, atol=1e-13)
    species = jax.numpy.asarray(rng.random(n) < 0.3, jax.numpy.int32)
    e1 = dj.energy.evaluate_arrays(mendelev, x, species, system.cell, nbrs)
    e2 = dj.energy.evaluate_arrays(mendelev, x, species, system.cell, tagged)
    np.testing.assert_allclose(np.asarray(e2.forces), np.asarray(e1.forces), rtol=1e-13, atol=1e-13)
    decomposition, order = domain.plan(positions, system.cell, 8.0)
    assert decomposition is None and np.array_equal(order, np.arange(n))


@pytest.mark.slow
def test_command_line_devices(tmp_path):
    """`dmdjax energy --devices`: the same energy, forces and free energy over 4 devices as on one,
    in the structure's atom order; the JSON says how many devices and processes ran."""
    structure = tmp_path / "slab.xyz"
    subprocess.run(["dmdjax", "build", "fcc", "--repeat", "5", "5", "8", "--solute", "Mg:0.1", "--rattle", "0.03",
                    "-o", str(structure)], check=True, capture_output=True)
    results = {}
    for devices in (1, 4):
        for extra in ([], ["--temperature", "600"]):
            done = subprocess.run(["dmdjax", "energy", str(structure), "--potential", "AlMg_Mendelev2009",
                                   "--devices", str(devices), "--json", *extra], env=_environment(4),
                                  capture_output=True, text=True, timeout=LIMIT)
            assert done.returncode == 0, done.stderr[-2000:]
            results[devices, bool(extra)] = json.loads(done.stdout)
    for vg in (False, True):
        one, four = results[1, vg], results[4, vg]
        assert one["devices"] == 1 and four["devices"] > 1 and four["processes"] == 1
        key, per_atom = ("free_energy", "chemical_potential") if vg else ("energy", "forces")
        assert abs(one[key] - four[key]) <= 1e-10 * abs(one[key])
        np.testing.assert_allclose(four[per_atom], one[per_atom], rtol=0, atol=1e-10)
