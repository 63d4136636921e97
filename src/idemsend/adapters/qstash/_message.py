"""Reading a QStash message once its signature is good: the JSON (depth, numbers, Unicode),
the default ``parse=`` and ``job_id=``, job id rules, and the ``Retry-After`` to answer with.

Everything here reads input from the network, so nothing raises past its caller: each
check returns why the input cannot be used, and the handler answers 489.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from ..._classify import MAX_RETRY_AFTER
from .._common import whole_seconds
from .._messages import default_parse, reject_constant

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "MAX_MESSAGE_ID_LENGTH",
    "VISIBLE_ASCII",
    "JobIdFrom",
    "Parse",
    "bad_job_id",
    "check_tree",
    "default_job_id",
    "default_parse",
    "reject_constant",
    "retry_after_seconds",
    "short",
]

#: How deeply the JSON message may nest (arrays and objects); 489 above it.
DEFAULT_MAX_DEPTH = 64
#: The longest job id (``Upstash-Message-Id`` or the body's id) accepted; 489 above it.
MAX_MESSAGE_ID_LENGTH = 256

#: ``parse=``: the parsed JSON message -> (data for the key template, body to send).
Parse = Callable[[Any], tuple[Mapping[str, Any], Any]]
#: ``job_id=`` (with ``job_id_from="body"``): the parsed JSON message -> its job id.
JobIdFrom = Callable[[Any], Any]

VISIBLE_ASCII = re.compile(r"[!-~]+")



def default_job_id(payload: Any) -> Any:
    """The job id of a message for ``job_id_from="body"``: its ``"job_id"`` field."""
    if not isinstance(payload, Mapping) or "job_id" not in payload:
        raise ValueError('the message must be a JSON object with "job_id" (job_id_from="body")')
    return payload["job_id"]


def retry_after_seconds(value: object) -> int | None:
    """Whole seconds for ``Retry-After`` from a ``RetryableError.retry_after``, rounded up;
    None (no header: QStash's own backoff applies) when it is missing, not a number or NaN;
    clamped to ``[0, MAX_RETRY_AFTER]`` (the project-wide ``idemsend.classify.MAX_RETRY_AFTER``,
    one hour), so ``inf`` or ``1e308`` from a custom engine or classifier cannot crash the
    handler or park a message."""
    limit = math.ceil(MAX_RETRY_AFTER)
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    if math.isnan(number):
        return None
    if not math.isfinite(number) or number >= limit:
        return limit
    return min(limit, whole_seconds(max(0.0, number)))



def _unicode_ok(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_tree(value: Any, max_depth: int) -> str | None:
    """Why ``value`` (parsed JSON) cannot be used, or None: nested deeper than
    ``max_depth``, a non-finite number (``1e999``), or a string that is not valid Unicode
    (a lone surrogate from a ``\\ud800`` escape, which cannot be sent). Iterative, so no
    depth can overflow the stack."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not _unicode_ok(item):
                return "it has a string that is not valid Unicode (a lone surrogate)"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "it has a number too large to represent"
        elif isinstance(item, dict | list):
            depth += 1
            if depth > max_depth:
                return f"it is nested more than {max_depth} deep"
            if isinstance(item, dict):
                if not all(_unicode_ok(key) for key in item):
                    return "it has a key that is not valid Unicode (a lone surrogate)"
                children: Any = item.values()
            else:
                children = item
            stack.extend((child, depth) for child in children if isinstance(child, str | float | dict | list))
    return None


def bad_job_id(value: Any) -> str | None:
    """Why ``value`` cannot be a job id, or None."""
    if not isinstance(value, str):
        return f"the job id must be a string, got {type(value).__name__}"
    if not value:
        return "the job id is empty"
    if len(value) > MAX_MESSAGE_ID_LENGTH:
        return f"the job id is {len(value)} characters, over the limit of {MAX_MESSAGE_ID_LENGTH}"
    if VISIBLE_ASCII.fullmatch(value) is None:
        return "the job id has a character that is not visible ASCII"
    return None


def short(value: str, limit: int = 80) -> str:
    """``value`` cut to ``limit`` characters, non-ASCII escaped (it may come from the network)."""
    cut = value if len(value) <= limit else value[:limit] + "..."
    return cut.encode("ascii", "backslashreplace").decode("ascii")
