"""Tooling that drives a checkout: not part of the installed package.

* ``harness.queues``: one driver per queue (``harness/queues/<queue>.py``) that runs the
  ``adapters/`` projects as real workers; the registry finds them by module.
* ``harness.chaos``: exactly one send per job under duplicates, faults, kills and a Redis
  restart, for every registered queue: ``python -m harness.chaos --jobs 10000``.

The conformance suite (``tests/adapters/test_conformance.py``) runs on the same drivers.
Run from the repository root (pytest puts it on the path).
"""
