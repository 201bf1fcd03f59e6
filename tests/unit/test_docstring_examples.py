"""The examples in the package's docstrings run as written (a stale one misleads)."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil

import lambdagrad
import pytest

#: Python modules only (the compiled kernels are loaded with ctypes, not imported)
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(lambdagrad.__path__, "lambdagrad.")
    if str(importlib.util.find_spec(m.name).origin).endswith(".py")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"
