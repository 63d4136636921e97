"""Where sends go and what they carry: the ``Endpoint`` value object.

It owns the checks on the URL and the request headers (an http(s) URL with a host,
single-line header values, not two kinds of credentials at once), the headers every
request sends (``Content-Type``, ``Authorization`` from ``api_key``, the caller's own),
and the ``Redactor`` that keeps those credentials (the API key, any header named like one,
the URL's password and query values) out of every log line, repr, error, result and
ledger record. The engine builds one at construction; nothing else handles raw
credentials.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from yarl import URL

from ._errors import ConfigError
from ._redact import Redactor, safe_url

__all__ = ["Endpoint"]


@dataclass(frozen=True, slots=True, repr=False, eq=False)
class Endpoint:
    """One provider endpoint, checked (build it with ``Endpoint.of``).

    ``url`` as given (it may hold credentials: never log it), ``headers`` what every request
    sends besides the idempotency key, ``redact`` the redactor of both, ``safe_url`` the URL
    without userinfo and query (for reprs and logs), ``host`` and ``port`` the server's."""

    url: str
    headers: Mapping[str, str]
    redact: Redactor
    safe_url: str
    host: str
    port: int | None

    @classmethod
    def of(
        cls, url: str, *, api_key: str | None = None, headers: Mapping[str, str] | None = None,
        idempotency_header: str = "Idempotency-Key", secrets: Iterable[str] = (),
    ) -> Endpoint:
        """Check ``url`` and ``headers`` and make the endpoint; ``ConfigError`` names what is wrong
        (never a credential). ``secrets``: more values to keep out of every text (a signer's)."""
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"url must be an http(s) URL, got {safe_url(url) if isinstance(url, str) else url!r}")
        try:
            parsed = URL(url)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"url is not a valid URL: {safe_url(url)}") from exc
        if not parsed.host:
            raise ConfigError(f"url has no host: {safe_url(url)}")
        for name, value in (headers or {}).items():
            if not isinstance(name, str) or not isinstance(value, str) or "\n" in value or "\r" in value:
                raise ConfigError(f"headers must map names to single-line strings; bad header {name!r}")
        base = {"Content-Type": "application/json", **(headers or {})}
        if api_key is not None:
            base["Authorization"] = f"Bearer {api_key}"
        if parsed.user is not None and any(name.lower() == "authorization" for name in base):
            raise ConfigError(
                "url carries credentials (user:password@) and an Authorization header is set too"
                " (api_key= or headers=): use one of them"
            )
        redact = Redactor.for_request(url, base, idempotency_header=idempotency_header, extra=secrets)
        return cls(url, MappingProxyType(base), redact, safe_url(url), parsed.host, parsed.port)

    def __repr__(self) -> str:
        return f"<Endpoint {self.safe_url}>"
