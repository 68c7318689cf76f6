"""Docstring examples are behaviour: every example in ``lens``, ``training`` and ``analyses`` not marked ``+SKIP``
(those need a trained model or a run dir) runs and prints what its docstring says, with ``lens`` and ``torch``
imported as a user would."""

from __future__ import annotations

import copy
import doctest
import importlib
import pkgutil

import pytest
import torch

import analyses
import lens
import training

MODULES = sorted(m.name for pkg in (lens, training, analyses)
                 for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    module = importlib.import_module(name)
    # doctest runs on a shallow copy of the module's globals: an example that appends to a module-level list
    # (plan's CHECKS did) would change what every later test sees
    before = {k: copy.deepcopy(v) for k, v in vars(module).items() if type(v) in (list, dict, set) and k[:2] != "__"}
    result = doctest.testmod(module, extraglobs={"lens": lens, "torch": torch}, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, (f"{result.failed} of {result.attempted} docstring examples of {name} failed; "
                                f"see the output above, or run python -m doctest -v {name.replace('.', '/')}.py")
    changed = sorted(k for k, v in before.items() if vars(module)[k] != v)
    assert not changed, f"docstring examples of {name} changed its module-level {changed}; mark them +SKIP"


def test_the_debate_format_examples_are_counted():
    """The format users write their own transcripts in keeps runnable examples (a test that finds none would pass
    vacuously)."""
    result = doctest.testmod(importlib.import_module("lens.debate_format"))
    assert result.failed == 0 and result.attempted >= 10
