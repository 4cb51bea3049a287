"""Every ``>>>`` example in the package runs (doctest over every module), so docstrings stay true.

Examples that need an optional extra (torch, the MiniLM wheel) or a long run are marked
``# doctest: +SKIP`` in the docstring itself; everything else executes here.
"""

import doctest
import importlib
import pkgutil

import pytest

import jaxprune

MODULES = sorted(["jaxprune"] + [m.name for m in pkgutil.walk_packages(jaxprune.__path__, "jaxprune.")])


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed in {name}"


def test_the_package_has_runnable_examples():
    total = 0
    for name in MODULES:
        finder = doctest.DocTestFinder()
        total += sum(len(t.examples) for t in finder.find(importlib.import_module(name)))
    assert total > 300  # 461 examples when this test was written
