"""Jobs, key derivation and key validation.

A key is derived from the job (its stable id and its data), never from the attempt:
the deriver is never shown the attempt number, so a key is stable across retries by
construction.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from ._errors import ConfigError, InvalidJobIdError, KeyDerivationError

__all__ = [
    "DEFAULT_MAX_KEY_LENGTH",
    "MAX_JOB_ID_BYTES",
    "Job",
    "KeyDeriver",
    "Template",
    "validate_job_id",
    "validate_key",
]

DEFAULT_MAX_KEY_LENGTH = 255
#: The longest job id, in UTF-8 bytes, that every ledger can store and index (a
#: Postgres btree entry holds at most 2,704 bytes; queue ids are 36-byte UUIDs or less).
MAX_JOB_ID_BYTES = 1024
_VISIBLE_ASCII = re.compile(r"[!-~]+")
_EMPTY: Mapping[str, Any] = MappingProxyType({})
# Placeholders that change on every retry: a template using them would make a new key
# per attempt and defeat the whole point (the contract's first two gotchas).
_VOLATILE_FIELDS = frozenset({"attempt", "try", "job_try", "retry", "retries", "timestamp", "now", "time"})


@dataclass(frozen=True, slots=True)
class Job:
    """One job as the queue knows it: a stable id and its data. No attempt field.

    ``id`` must be the id the queue keeps across redeliveries (arq ``ctx["job_id"]``,
    RQ ``job.id``, QStash ``Upstash-Message-Id``).
    """

    id: str
    data: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        validate_job_id(self.id)


def validate_job_id(job_id: object) -> str:
    """Return ``job_id`` if every ledger can store it, else raise InvalidJobIdError.

    One rule for every ledger: a non-empty ``str`` that encodes as UTF-8 (no lone
    surrogates), holds no NUL (Postgres text cannot), and is at most
    ``MAX_JOB_ID_BYTES`` UTF-8 bytes. ``Job`` applies it at construction, so a bad id
    fails its own job with a clear error before anything is batched or sent.
    """
    if not isinstance(job_id, str) or not job_id:
        raise InvalidJobIdError(f"Job.id must be a non-empty string, got {job_id!r}")
    try:
        size = len(job_id.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidJobIdError(
            f"Job.id is not valid Unicode text: {job_id[exc.start]!r} at {exc.start} is a lone"
            f" surrogate, which no ledger can store (job id {job_id[:40]!r})"
        ) from None
    if "\x00" in job_id:
        raise InvalidJobIdError(
            f"Job.id holds a NUL character at {job_id.index(chr(0))}, which no ledger can store"
            f" (job id {job_id[:40]!r})"
        )
    if size > MAX_JOB_ID_BYTES:
        raise InvalidJobIdError(
            f"Job.id is {size} UTF-8 bytes, over the limit of {MAX_JOB_ID_BYTES}: {job_id[:40]!r}…"
        )
    return job_id


@runtime_checkable
class KeyDeriver(Protocol):
    """Anything with ``derive(job) -> str`` derives idempotency keys."""

    def derive(self, job: Job) -> str:
        """The idempotency key for ``job``: the same for every attempt of the same job."""
        ...


@dataclass(frozen=True, slots=True)
class Template:
    """Derive a key from a ``str.format`` template.

    ``{job_id}`` is ``job.id``; every other name is looked up in ``job.data``.
    ``Template("welcome:{user_id}:{job_id}")`` is the everyday deriver.
    """

    template: str
    fields: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        if not isinstance(self.template, str) or not self.template:
            raise ConfigError("Template needs a non-empty template string")
        names: list[str] = []
        try:
            parsed = list(string.Formatter().parse(self.template))
        except ValueError as exc:
            raise ConfigError(f"bad key template {self.template!r}: {exc}") from exc
        for _literal, name, spec, conversion in parsed:
            if name is None:
                continue
            if not name.isidentifier() or spec or conversion:
                raise ConfigError(
                    f"key template {self.template!r}: placeholder {{{name}}} must be a plain name"
                    " (no index, attribute, format spec or conversion)"
                )
            if name.lower() in _VOLATILE_FIELDS:
                raise ConfigError(
                    f"key template {self.template!r} uses {{{name}}}, which changes on every retry;"
                    " derive the key from the job id and its data only"
                )
            names.append(name)
        object.__setattr__(self, "fields", tuple(names))

    def derive(self, job: Job) -> str:
        """Fill the template from ``job`` (raises KeyDerivationError for a missing name)."""
        values: dict[str, Any] = {}
        for name in self.fields:
            if name == "job_id":
                values[name] = job.id
            elif name in job.data:
                values[name] = job.data[name]
            else:
                raise KeyDerivationError(
                    f"key template {self.template!r} needs {{{name}}}, which job {job.id!r}"
                    f" does not have (its data has: {sorted(job.data) or 'nothing'})"
                )
        return self.template.format(**values)


def validate_key(key: object, *, max_length: int = DEFAULT_MAX_KEY_LENGTH) -> str:
    """Return ``key`` if it is a valid idempotency key, else raise KeyDerivationError.

    Valid: a non-empty ``str`` of visible ASCII (``!`` to ``~``; no spaces or control
    characters, which HTTP would trim or reject) of at most ``max_length`` characters.
    """
    if not isinstance(key, str):
        raise KeyDerivationError(f"a key must be a str, got {type(key).__name__}")
    if not key:
        raise KeyDerivationError("the derived key is empty")
    if len(key) > max_length:
        raise KeyDerivationError(
            f"the derived key is {len(key)} characters, over the limit of {max_length}: {key[:40]!r}…",
            key=key[:max_length],
        )
    if _VISIBLE_ASCII.fullmatch(key) is None:
        pos, ch = next((i, c) for i, c in enumerate(key) if not "!" <= c <= "~")
        raise KeyDerivationError(
            f"the derived key has a character that is not visible ASCII ({ch!r} at {pos}): {key!r}"
        )
    return key
