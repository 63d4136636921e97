"""Is this store fit to be a ledger? One policy for every backend.

A ledger's ``start()`` reads what it can about its store (its version, whether it may
drop records on its own, what a crash or a restart loses, what it could not read) into
``StoreFacts``, the words of each finding its own; ``judge(facts)`` applies the policy,
which is the same for every store, and answers a ``Verdict``; ``Verdict.enforce()``
raises or logs it. ``judge`` is pure: ``tests/ledger/test_fitness.py`` checks it row by
row without a store. A ledger of your own gathers its facts and calls the same two.

The policy (a done record that vanishes turns a replay after the provider's window into
a double send, so what loses records silently is refused and what a crash loses is
warned about):

=========================================  ============================================
fact                                       verdict
=========================================  ============================================
``too_old``: the ledger cannot run there   refused (``ConfigError``)
``evicts``: drops records on its own       refused, unless ``allow_eviction``: a
                                           WARNING (code ``eviction_allowed``)
``forgets``: persists nothing              a WARNING (``no_persistence``): a restart
                                           loses every record
``loses``: a crash can lose commits        a WARNING (``no_durability``)
``unchecked``: could not be read           a WARNING (``unchecked``)
``cautions``: other risks                  a WARNING each, with its own code
=========================================  ============================================

A refusal is raised before anything is logged. Warnings go to the ``idemsend.ledger``
logger with their code in the record's structured fields (``op="start"``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .._errors import ConfigError
from .._log import fields

__all__ = ["Caution", "Finding", "StoreFacts", "Verdict", "judge"]

log = logging.getLogger("idemsend.ledger")

_DOUBLE_SEND = (
    "A done record lost that way means a replay of its job after the provider's idempotency window is sent again"
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing read about one server: ``server`` names it (``"127.0.0.1:6379"``,
    ``"database app"``), ``detail`` says what was read, in the words a message quotes
    after the server's name (``"has maxmemory-policy allkeys-lru (...)"``)."""

    server: str
    detail: str


@dataclass(frozen=True, slots=True)
class Caution:
    """A warning: ``code`` (the log record's structured ``code``) and the message logged."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class StoreFacts:
    """What a ledger read about its store (every server of it, on a cluster), for ``judge``.

    ``store`` is how a message names the store (``"Redis"``, ``"the ledger's PostgreSQL"``)
    and ``ledger`` the ledger class a refusal names. The findings, each a tuple of
    ``Finding`` (empty: none found):

    * ``too_old``: servers the ledger cannot run on (``"runs Redis 6.2.14"``); ``needs``
      says what it needs (``"Redis 7.0 or newer (...)"``).
    * ``evicts``: servers that may drop records on their own (an eviction policy);
      ``eviction`` is why that loses records there (a sentence, or ``""``), and
      ``keep_records`` how to stop it (``"Set maxmemory-policy noeviction (...)"``).
    * ``forgets``: servers that persist nothing (``detail``: the settings as read), so a
      restart loses every record.
    * ``loses``: what a crash can lose (``"fsync is off (...)"``).
      ``persist`` says what to do about ``forgets`` and ``loses`` in production.
    * ``unchecked``: servers whose settings could not be read, and why; ``check`` is what
      to make sure of by hand.
    * ``cautions``: other risks, warned about as they are.
    """

    store: str
    ledger: str
    too_old: tuple[Finding, ...] = ()
    needs: str = "a newer server"
    evicts: tuple[Finding, ...] = ()
    eviction: str = ""
    keep_records: str = "Make the store keep every record until it expires"
    forgets: tuple[Finding, ...] = ()
    loses: tuple[Finding, ...] = ()
    persist: str = "not in production"
    unchecked: tuple[Finding, ...] = ()
    check: str = "make sure it never evicts records and persists them"
    cautions: tuple[Caution, ...] = ()


@dataclass(frozen=True, slots=True)
class Verdict:
    """What ``judge`` decided: ``refusal`` (the ``ConfigError``'s message; ``None``: the
    store is fit) and the ``warnings`` to log when it is not refused."""

    refusal: str | None = None
    warnings: tuple[Caution, ...] = ()

    @property
    def fit(self) -> bool:
        """Whether the store may be used (it may still have warnings)."""
        return self.refusal is None

    def refuse(self) -> None:
        """Raise ``ConfigError`` when the store is refused; nothing else."""
        if self.refusal is not None:
            raise ConfigError(self.refusal)

    def enforce(self) -> None:
        """Raise ``ConfigError`` when refused (nothing is logged then); else log each
        warning (WARNING, logger ``idemsend.ledger``, with its code)."""
        self.refuse()
        for warning in self.warnings:
            log.warning("%s", warning.message, extra=fields(code=warning.code, op="start"))


def _each(findings: Iterable[Finding]) -> str:
    return "; ".join(f"{f.server} {f.detail}" for f in findings)


def _servers(findings: Sequence[Finding]) -> str:
    return ", ".join(dict.fromkeys(f.server for f in findings))


def judge(facts: StoreFacts, *, allow_eviction: bool = False) -> Verdict:
    """The policy (see the module docstring) applied to ``facts``. Pure: it reads nothing
    and logs nothing. ``allow_eviction`` is the user's acceptance of a store that may evict
    records: a warning instead of a refusal."""
    if facts.too_old:
        return Verdict(f"{facts.ledger} needs {facts.needs}: {_each(facts.too_old)}")
    warnings: list[Caution] = []
    if facts.evicts:
        why = f"{facts.eviction} " if facts.eviction else ""
        risk = f"{facts.store} {_each(facts.evicts)}. {why}{_DOUBLE_SEND}: a double send."
        if not allow_eviction:
            return Verdict(
                f"{risk} {facts.keep_records}, or pass allow_eviction=True to {facts.ledger} to accept the risk."
            )
        warnings.append(Caution("eviction_allowed", f"idemsend: {risk} Continuing because allow_eviction=True."))
    if facts.forgets:
        warnings.append(Caution("no_persistence", (
            f"idemsend: {facts.store} {_servers(facts.forgets)} persists nothing"
            f" ({'; '.join(f.detail for f in facts.forgets)}): a restart loses every ledger record, and a done"
            " record lost that way means a replay of its job after the provider's idempotency window is sent"
            f" again (a double send). Fine for development and CI; {facts.persist}."
        )))
    if facts.loses:
        warnings.append(Caution("no_durability", (
            f"idemsend: {facts.store} ({_servers(facts.loses)}) may lose records:"
            f" {'; '.join(f.detail for f in facts.loses)}. {_DOUBLE_SEND} (a double send). Fine for development"
            f" and CI; {facts.persist}."
        )))
    if facts.unchecked:
        warnings.append(Caution("unchecked", (
            f"idemsend: could not check {facts.store} {_servers(facts.unchecked)}"
            f" ({'; '.join(f.detail for f in facts.unchecked)}): {facts.check}, or ledger records can vanish and"
            " a replay after the provider's idempotency window is sent again (a double send)."
        )))
    warnings.extend(facts.cautions)
    return Verdict(None, tuple(warnings))
