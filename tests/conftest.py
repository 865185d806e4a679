"""Test configuration: double precision for correctness checks (DESIGN.md §9)."""

import warnings

import jax
import numpy as np
import pytest

from dmdjax.cli import cpu_compile_flags

cpu_compile_flags()  # as the command line does (faster XLA:CPU compiles); the backend starts later
jax.config.update("jax_enable_x64", True)
warnings.filterwarnings("ignore", message="scatter inputs have incompatible types")

DATA = __import__("pathlib").Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def mendelev():
    import dmdjax as dj

    return dj.load_eam("AlMg_Mendelev2009")


@pytest.fixture(scope="session")
def mendelev_path():
    import dmdjax as dj

    return str(dj.potentials.resolve_potential_path("AlMg_Mendelev2009"))


def random_alloy(repeats=(4, 4, 4), a=4.05, noise=0.1, solute="Mg", fraction=0.3, seed=0, pbc=True):
    """Rattled fcc Al with random solute substitution, as ase.Atoms."""
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    atoms = bulk("Al", "fcc", a=a, cubic=True).repeat(repeats)
    atoms.positions += rng.normal(0.0, noise, atoms.positions.shape)
    symbols = np.array(atoms.get_chemical_symbols(), dtype=object)
    symbols[rng.random(len(atoms)) < fraction] = solute
    atoms.set_chemical_symbols(symbols.tolist())
    atoms.pbc = pbc
    return atoms


@pytest.fixture
def execute_notebook(tmp_path, monkeypatch):
    """Run ``notebooks/<name>`` top to bottom with nbclient, at reduced size (the notebooks read
    ``DMDJAX_NOTEBOOK_REDUCED``), in ``tmp_path``; returns the text of all outputs. Fails on any
    error output (a failing ``assert`` cell included)."""
    import nbclient  # the [test] extra: a missing tool fails the notebook tests, never skips them
    import nbformat

    monkeypatch.setenv("DMDJAX_NOTEBOOK_REDUCED", "1")  # the kernel inherits the environment

    def execute(name):
        notebook = nbformat.read(DATA.parents[1] / "notebooks" / name, as_version=4)
        nbclient.NotebookClient(notebook, timeout=1800, kernel_name="python3",  # a hang guard per cell
                                resources={"metadata": {"path": str(tmp_path)}}).execute()
        outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
        assert not [output for output in outputs if output.output_type == "error"]
        return "".join(output.get("text", "") for output in outputs)

    return execute


def check_study_resumes(command, output, copy):
    """Cut the study in ``output`` after its second output (as if killed), check that the CLI
    ``command`` (argument list without ``--output``) refuses to overwrite it, resumes it with
    ``--resume``, and ends bit for bit where the uninterrupted run ended."""
    import json
    import shutil

    from dmdjax import cli, dmd

    shutil.copytree(output, copy)
    full = dmd.load_trajectory(output / "trajectory.npz")
    # A file of two outputs holds the list rebuilds made before the second was written.
    full.first(2).save(copy / "trajectory.npz")
    assert cli.main([*command, "--output", str(copy)]) == 2  # refuses to overwrite
    assert cli.main([*command, "--output", str(copy), "--resume"]) == 0
    assert json.loads((copy / "summary.json").read_text())["kinetics"]["resumed_from"] == 2
    again = dmd.load_trajectory(copy / "trajectory.npz")
    np.testing.assert_array_equal(np.asarray(again.order_parameter), np.asarray(full.order_parameter))


#: Fixtures that run a whole study or notebook: a test that uses one is in the slow tier.
SLOW_FIXTURES = ("study", "execute_notebook")


def pytest_collection_modifyitems(config, items):
    """The fast tier (``pytest -m "not slow"``) leaves out every test that runs a study or a
    notebook (:data:`SLOW_FIXTURES`), besides those marked ``slow`` by hand."""
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in SLOW_FIXTURES):
            item.add_marker(pytest.mark.slow)
