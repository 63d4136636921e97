"""``ledger_from_url``: one URL names the ledger (``IDEMSEND_LEDGER_URL``, ``idemsend inspect``).

The schemes live in one table, ``_SCHEMES``: a scheme maps to a factory
``(url, prefix, options) -> Ledger``. A new ledger adds its schemes there. A factory
imports its ledger's module when it runs, so a missing extra (``idemsend[redis]``,
``idemsend[postgres]``) only matters for the scheme used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from yarl import URL

from .._errors import ConfigError
from .._redact import Redactor, safe_url
from ._base import Ledger

__all__ = ["ledger_from_url"]

#: Makes a ledger for a URL of its scheme: ``(url, prefix, options)``.
LedgerFactory = Callable[[str, str, dict[str, Any]], Ledger]


def _memory(url: str, prefix: str, options: dict[str, Any]) -> Ledger:
    from ._memory import MemoryLedger

    if url.partition("://")[2].strip("/"):
        raise ConfigError(
            f"a memory:// ledger URL takes no host or path, got {safe_url(url)}; pass MemoryLedger's options"
            " (retention, max_records, ...) as keyword arguments"
        )
    return MemoryLedger(**options)  # one process's memory: nothing to prefix


def _redis(url: str, prefix: str, options: dict[str, Any]) -> Ledger:
    from ._redis import RedisLedger

    return RedisLedger.from_url(url, prefix=prefix, **options)


def _redis_cluster(url: str, prefix: str, options: dict[str, Any]) -> Ledger:
    from ._redis import RedisLedger

    scheme, _, rest = url.partition("://")
    plain = "rediss" if scheme.lower() == "rediss+cluster" else "redis"
    return RedisLedger.from_url(f"{plain}://{rest}", cluster=True, prefix=prefix, **options)


def postgres_table_for_prefix(prefix: str) -> str:
    """The table a Postgres ledger uses for a key ``prefix``: ``<prefix>_ledger``, lower
    case, ``-`` read as ``_`` (``idemsend`` -> ``idemsend_ledger``, the default table)."""
    return f"{prefix.lower().replace('-', '_')}_ledger"


def _postgres(url: str, prefix: str, options: dict[str, Any]) -> Ledger:
    from ._postgres import PostgresLedger, validate_table

    if "table" not in options and "table" not in dict(parse_qsl(urlsplit(url).query)):
        table = postgres_table_for_prefix(prefix)
        try:
            validate_table(table)
        except ConfigError:
            raise ConfigError(
                f"the prefix {prefix!r} makes no Postgres table name ({table!r}): a Postgres ledger's prefix names"
                " its table <prefix>_ledger, so use letters, digits, '_' or '-', not starting with a digit, at most"
                " 39 characters; or pass table=..."
            ) from None
        options["table"] = table
    return PostgresLedger.from_url(url, **options)


def _dynamodb(url: str, prefix: str, options: dict[str, Any]) -> Ledger:
    from ._dynamodb import DynamoDBLedger

    parts = urlsplit(url)
    if parts.path.strip("/") or parts.username or parts.password or parts.port:
        raise ConfigError(
            f"a dynamodb:// ledger URL is dynamodb://TABLE?region=...&endpoint_url=..., got {safe_url(url)}"
        )
    query: dict[str, Any] = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = set(query) - {"region", "endpoint_url", "create_table"}
    if unknown:
        raise ConfigError(f"unknown dynamodb:// URL parameter(s) {', '.join(sorted(unknown))}; known: region,"
                          " endpoint_url, create_table")
    if "create_table" in query:
        flag = query["create_table"].lower()
        if flag not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"create_table in a dynamodb:// URL is true or false, got {query['create_table']!r}")
        query["create_table"] = flag in ("true", "1", "yes")
    table = parts.hostname or ""  # as written: hostname is lower-cased by urlsplit
    table = parts.netloc.rpartition("@")[2] or table
    return DynamoDBLedger(table, prefix=prefix, **{**query, **options})


def sqlite_path(url: str) -> str:
    """The file a ``sqlite:///`` URL names: ``sqlite:///ledger.db`` is ``ledger.db`` (relative
    to the working directory), ``sqlite:////var/lib/app/ledger.db`` the absolute path,
    ``sqlite:///:memory:`` a throwaway in-memory ledger; percent-escapes are decoded.
    ``ConfigError`` for a host (``sqlite://host/...``) or no path."""
    from urllib.parse import unquote

    rest = url.partition("://")[2].partition("?")[0].partition("#")[0]
    host, slash, path = rest.partition("/")
    if host:
        raise ConfigError(
            f"a sqlite:// ledger URL takes no host, got {safe_url(url)}: write sqlite:///relative/path.db or"
            " sqlite:////absolute/path.db (three slashes, then the path)"
        )
    path = unquote(path)
    if not slash or not path:
        raise ConfigError(f"a sqlite:// ledger URL needs a file path, got {safe_url(url)}: e.g. sqlite:///ledger.db")
    return path


def _sqlite(url: str, prefix: str, options: dict[str, Any]) -> Ledger:
    from ._sqlite import SQLiteLedger

    query = dict(parse_qsl(urlsplit(url).query))
    for name, value in query.items():
        if name in ("table", "synchronous"):
            options.setdefault(name, value)
        elif name in ("timeout", "retention"):
            try:
                options.setdefault(name, float(value))
            except ValueError:
                raise ConfigError(f"{name} in the ledger URL {safe_url(url)} must be a number") from None
        else:
            raise ConfigError(
                f"unknown sqlite:// ledger URL parameter {name!r}; known: table, synchronous, timeout, retention"
            )
    if "table" not in options:
        from ._sqlite import validate_table

        table = postgres_table_for_prefix(prefix)  # the same rule: <prefix>_ledger
        try:
            validate_table(table)
        except ConfigError:
            raise ConfigError(
                f"the prefix {prefix!r} makes no SQLite table name ({table!r}): a SQLite ledger's prefix names its"
                " table <prefix>_ledger, so use letters, digits, '_' or '-', not starting with a digit; or pass"
                " table=..."
            ) from None
        options["table"] = table
    return SQLiteLedger(sqlite_path(url), **options)


_SCHEMES: dict[str, LedgerFactory] = {
    "memory": _memory,
    "redis": _redis,
    "rediss": _redis,
    "unix": _redis,
    "redis+cluster": _redis_cluster,
    "rediss+cluster": _redis_cluster,
    "postgresql": _postgres,
    "postgres": _postgres,
    "dynamodb": _dynamodb,
    "sqlite": _sqlite,
}


def ledger_from_url(url: str, *, prefix: str = "idemsend", **options: Any) -> Ledger:
    """The ledger a URL names, made (not started: ``Engine.start()`` does that).

    * ``memory://``: a ``MemoryLedger`` (one process; ``prefix`` is not used).
    * ``redis://``, ``rediss://`` (TLS), ``unix://`` (a socket path): ``RedisLedger.from_url``.
    * ``redis+cluster://`` (``rediss+cluster://``): a ``RedisLedger`` on Redis Cluster,
      the URL read as ``redis://`` (``rediss://``) with ``cluster=True``.
    * ``postgresql://``, ``postgres://``: ``PostgresLedger.from_url``, its table
      ``<prefix>_ledger`` (``idemsend_ledger`` by default; ``-`` read as ``_``) unless
      ``table=`` is given (an option, or ``?table=`` in the URL). ``?create_table=true``
      and ``?statement_cache_size=0`` (PgBouncer) are read from the URL too.
    * ``dynamodb://TABLE?region=...&endpoint_url=...``: a ``DynamoDBLedger`` on that
      table (``?create_table=true`` too), its items namespaced by ``prefix``.
    * ``sqlite:///path.db`` (relative), ``sqlite:////abs/path.db``: a ``SQLiteLedger`` on
      that file, its table ``<prefix>_ledger`` as for PostgreSQL unless ``table=`` is given;
      ``?synchronous=normal``, ``?timeout=`` and ``?table=`` are read from the URL too.

    ``options`` go to the ledger's constructor (``retention=``, ``allow_eviction=``,
    ``socket_timeout=``, ``max_records=``, ``timeout=``, ``create_table=``...); one it
    does not take raises ``TypeError``.
    An unknown scheme, or a URL the ledger cannot use, raises ``idemsend.ConfigError``.
    Error messages never carry the URL's password (nor its query string).
    """
    if not isinstance(url, str) or "://" not in url:
        # not shown: without a scheme there is no telling which part is a password
        raise ConfigError(f"not a ledger URL (a {type(url).__name__} without scheme://); known schemes: {_known()}")
    scheme = url.partition("://")[0].lower()
    factory = _SCHEMES.get(scheme)
    if factory is None:
        raise ConfigError(f"unknown ledger URL scheme {scheme!r} in {safe_url(url)}; known: {_known()}")
    try:
        return factory(url, prefix, dict(options))
    except ConfigError:
        raise
    except ValueError as exc:  # e.g. a port that is not a number; the message may quote the URL
        raise ConfigError(f"invalid ledger URL {safe_url(url)}: {_scrub(url, str(exc))}") from None


def _known() -> str:
    return ", ".join(f"{scheme}://" for scheme in sorted(_SCHEMES))


def _scrub(url: str, text: str) -> str:
    """``text`` (a client library's error about ``url``) without the URL's credentials."""
    text = Redactor.for_request(url, {}).text(text.replace(url, safe_url(url)))
    try:
        password = URL(url).password
    except (TypeError, ValueError):
        password = None
    if password and password in text:  # too short for the redactor to replace safely
        return "(details withheld: they could quote the URL's password)"
    return text
