"""Queue drivers, one module per queue: the only code in the harness that knows a queue.

The registry is the modules of this package: every ``QueueDriver`` subclass defined in a
module here (other than ``base``) is a queue, listed by its ``order`` then ``name``. To add
a queue, write ``harness/queues/<queue>.py`` with one driver (and its worker project in
``adapters/``); the conformance suite and the chaos run pick it up with no other edit.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import CHAOS, CONFORMANCE, Profile, QueueDriver, QueueJob, RunDir, Terminal

__all__ = ["CHAOS", "CONFORMANCE", "Profile", "QueueDriver", "QueueJob", "RunDir", "Terminal", "driver", "drivers"]


def drivers() -> dict[str, type[QueueDriver]]:
    """Every queue's driver class by queue name, in table order."""
    found: list[type[QueueDriver]] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found += [
            value for value in vars(module).values()
            if isinstance(value, type) and issubclass(value, QueueDriver) and value.__module__ == module.__name__
        ]
    ordered = sorted(found, key=lambda cls: (cls.order, cls.name))
    names = [cls.name for cls in ordered]
    if len(set(names)) != len(names):
        raise RuntimeError(f"two queue drivers share a name: {names}")
    return {cls.name: cls for cls in ordered}


def driver(name: str) -> type[QueueDriver]:
    """The driver class of queue ``name``."""
    known = drivers()
    if name not in known:
        raise KeyError(f"no queue driver {name!r}; known: {', '.join(known)}")
    return known[name]
