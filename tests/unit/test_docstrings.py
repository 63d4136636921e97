"""Every public name has a docstring: each name in a public module's ``__all__``, and each
public method and property of the public classes (what the API reference shows)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator

import pytest

from idemsend import MissingExtraError

# The public modules; optional extras are checked only where they are installed.
MODULES = [
    "idemsend",
    "idemsend.classify",
    "idemsend.ledger",
    "idemsend.testing",
    "idemsend.adapters",
    "idemsend.adapters.arq",
    "idemsend.adapters.rq",
    "idemsend.adapters.qstash",
    "idemsend.adapters.dramatiq",
]


def _public(module_name: str) -> Iterator[tuple[str, object]]:
    try:
        module = importlib.import_module(module_name)
    except MissingExtraError:
        return
    for name in getattr(module, "__all__", ()):
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            yield f"{module_name}.{name}", obj
        if inspect.isclass(obj) and obj.__module__.startswith("idemsend"):
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(member, staticmethod | classmethod):
                    member = member.__func__
                if inspect.isfunction(member) or isinstance(member, property):
                    yield f"{module_name}.{name}.{attr}", member


def _undocumented() -> list[str]:
    missing = set()
    for module_name in MODULES:
        for qualname, obj in _public(module_name):
            if not (inspect.getdoc(obj) or "").strip():
                missing.add(qualname)
    return sorted(missing)


@pytest.mark.parametrize("module_name", MODULES)
def test_public_module_has_a_docstring(module_name: str) -> None:
    try:
        module = importlib.import_module(module_name)
    except MissingExtraError:
        pytest.skip(f"{module_name}: its extra is not installed")
    assert (module.__doc__ or "").strip(), module_name


def test_every_public_name_has_a_docstring() -> None:
    missing = _undocumented()
    assert not missing, f"{len(missing)} public names without a docstring:\n" + "\n".join(missing)
