"""Where the idempotency key travels: in a request header (the default), or at a dotted path
in the JSON object body (``Provider(key_field="idempotency_key")``: Square, Plaid, Brevo's
``headers.idempotencyKey``).

A body key is written into the body *before* the body is serialised and fingerprinted
(``keyed_body``), so every try and every worker sends the same bytes, and the ledger's
frozen body is the keyed one. Pure functions: no I/O.

A GraphQL API that takes the key as a variable (Shopify's ``@idempotent(key: $key)``
directive) is the same seam: ``key_field="variables.idempotencyKey"`` puts the key into the
operation's variables, and the query text names the variable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ._errors import ConfigError, InvalidBodyError

__all__ = ["keyed_body", "parse_key_field"]

#: The deepest a ``key_field`` path may go: deeper ones are mistakes.
MAX_DEPTH = 8


def parse_key_field(path: object) -> tuple[str, ...]:
    """The parts of a ``key_field`` dotted path (``"headers.idempotencyKey"``), or
    ``ConfigError`` naming what is wrong with it: not a string, an empty part (``"a..b"``,
    ``".a"``), whitespace or a control character in it, deeper than ``MAX_DEPTH``."""
    if not isinstance(path, str):
        raise ConfigError(f"key_field must be a dotted path string like 'idempotency_key', got {path!r}")
    parts = tuple(path.split("."))
    if not path or any(not part for part in parts):
        raise ConfigError(f"key_field {path!r} has an empty part: write names separated by single dots ('a.b')")
    if any(not ch.isprintable() or ch.isspace() for ch in path):
        raise ConfigError(f"key_field {path!r} holds whitespace or a control character")
    if len(parts) > MAX_DEPTH:
        raise ConfigError(f"key_field {path!r} is {len(parts)} levels deep; at most {MAX_DEPTH}")
    return parts


def keyed_body(body: Any, parts: tuple[str, ...], key: str) -> dict[str, Any]:
    """A copy of ``body`` (a JSON object, or its bytes) with ``key`` at the path ``parts``.

    Objects on the path that are missing are created; nothing in ``body`` itself is changed.
    ``InvalidBodyError`` names the path when the body is not a JSON object, when the path
    runs through something that is not an object, or when the body already holds another
    value there (a body built for another key: sending it would pair this key with the
    other key's request). The same key already there is fine."""
    where = ".".join(parts)
    if isinstance(body, bytes | bytearray | memoryview):
        try:
            body = json.loads(bytes(body))
        except (ValueError, RecursionError) as exc:
            raise InvalidBodyError(f"the key goes into the body at {where!r}, but the body bytes are not JSON") from exc
    if not isinstance(body, Mapping):
        raise InvalidBodyError(
            f"the key goes into the body at {where!r}, so the body must be a JSON object, got {type(body).__name__}"
        )
    root: dict[str, Any] = dict(body)
    node = root
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None and part not in node:
            child = {}
        elif not isinstance(child, Mapping):
            through = ".".join(parts[: depth + 1])
            raise InvalidBodyError(
                f"the key goes into the body at {where!r}, but {through!r} is a {type(child).__name__}, not an object"
            )
        copied = dict(child)
        node[part] = copied
        node = copied
    leaf = parts[-1]
    if leaf in node and node[leaf] != key:
        raise InvalidBodyError(
            f"the body already holds another value at {where!r}: the engine writes the job's key there;"
            " drop the field from the body (or make the key template give that value)"
        )
    node[leaf] = key
    return root
