"""The notebooks run from top to bottom (executed with nbclient, as CI does, at reduced size).

``fit_parameters.ipynb`` runs in ``test_fit.py`` (the files are spread over the test workers).
"""

import pytest

pytestmark = pytest.mark.slow  # notebook runs: CI runs them, the fast tier does not


def test_chain_notebook(execute_notebook):
    text = execute_notebook("chain.ipynb")
    assert "residual" in text and "max |Σs(t) − Σs(0)|" in text


def test_fit_sampler_notebook(execute_notebook):
    """Fitting demo 2 (issue 9): DMD's mobility law k_c (1 − a s_i s_j) fitted to the sampler's replica
    average; the notebook asserts that it beats k_c = β/(2τ) and that χ²/n < 2."""
    text = execute_notebook("fit_sampler.ipynb")
    assert "M = k_c (1 − a s_i s_j)" in text and "β/(2τ) = 10 per eV·τ" in text
