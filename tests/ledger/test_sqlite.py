"""SQLiteLedger beyond the contract: many processes on one file, a process SIGKILLed while
it holds the write lock, a file locked past the busy timeout, bad paths and files, the
network-filesystem check, rows it cannot read, the sweep, group commit, hostile keys.

Real parts only: real files, real processes (``sys.executable``), the real MockProvider."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from idemsend import ConfigError, Engine, Job, Provider, RetryableError, RetryPolicy
from idemsend.ledger import Busy, Claimed, LedgerUnavailableError, SQLiteLedger, Unstable
from idemsend.ledger._fitness import judge
from idemsend.ledger._sqlite._decide import Op, Row, decide_claim, decide_settle
from idemsend.ledger._sqlite._fitness import Mount, mount_of, network_refusal, parse_mounts, store_facts
from idemsend.testing import MockProvider

from .conftest import LockedFile

pytestmark = pytest.mark.anyio

P1 = b'{"to":["a"]}'
LEDGER_LOG = "idemsend.ledger"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "ledger.db")


@pytest.fixture
async def ledger(db: str) -> Any:
    made = SQLiteLedger(db)
    await made.start()
    yield made
    await made.aclose()


# -- many processes, one file --------------------------------------------------------------

_CLAIMER = """
import asyncio, json, sys
from idemsend.ledger import Claimed, SQLiteLedger

async def main(path, name, keys):
    ledger = SQLiteLedger(path, timeout=60)
    await ledger.start()
    print("ready", flush=True)
    sys.stdin.readline()  # every process starts claiming at once
    results = await asyncio.gather(*(
        ledger.claim(key=f"k{i}", job_id=f"j{i}", payload=b"x", fingerprint="fp", token=f"{name}-{i}", lease=300)
        for i in range(keys)
    ))
    await ledger.aclose()
    print(json.dumps([i for i, r in enumerate(results) if isinstance(r, Claimed)]), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


@pytest.mark.processes
def test_four_processes_claiming_the_same_keys_at_once_get_one_winner_per_key(db: str) -> None:
    keys = 300
    procs = [
        subprocess.Popen([sys.executable, "-c", _CLAIMER, db, f"p{n}", str(keys)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for n in range(4)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    won: list[int] = []
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err.decode()[-2000:]
        won.extend(json.loads(out.decode().strip().splitlines()[-1]))
    assert sorted(won) == list(range(keys))  # every key claimed, and by one process only
    con = sqlite3.connect(db)
    try:
        tokens = dict(con.execute("SELECT key, token FROM idemsend_ledger").fetchall())
    finally:
        con.close()
    assert len(tokens) == keys and all(token.endswith(f"-{key[1:]}") for key, token in tokens.items())


_HOLDER = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
con.execute("BEGIN IMMEDIATE")
con.execute("INSERT INTO idemsend_ledger (key, state, job_id, fingerprint, body, first_sent_at, token,"
            " lease_until, expires_at) VALUES ('ghost', 'in_flight', 'jg', 'fp', x'00', 0, 't', 0, 1e12)")
print("holding", flush=True)
time.sleep(3600)
"""


async def test_a_process_killed_holding_the_write_lock_leaves_nothing_half_written(ledger: SQLiteLedger) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, ledger.path], stdout=subprocess.PIPE)  # noqa: ASYNC220
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"holding"
    holder.send_signal(signal.SIGKILL)  # mid-transaction: its row was never committed
    holder.communicate()
    assert holder.returncode == -signal.SIGKILL
    claim = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint="fp", token="t", lease=30)
    assert isinstance(claim, Claimed) and claim.fresh
    assert await ledger.get("ghost") is None
    assert sqlite3.connect(ledger.path).execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_a_file_locked_past_the_busy_timeout_fails_closed_and_sends_nothing(db: str) -> None:
    ledger = SQLiteLedger(db, timeout=0.5)
    await ledger.start()
    lock = LockedFile(db)
    lock.stop()  # another process holds the write lock
    try:
        async with MockProvider() as p:
            async with Engine(p.emails_url, key="welcome:{job_id}", api_key=p.api_key, ledger=ledger,
                              retry=RetryPolicy(retries=0)) as engine:
                with pytest.raises(RetryableError) as caught:
                    await engine.send(Job("j1", {}), {"to": ["a"]})
                assert caught.value.reason == "ledger"
                assert "busy" in str(caught.value.__cause__ or caught.value) or "ledger" in str(caught.value)
                assert p.stats.requests == 0  # nothing is sent while the ledger cannot record it
                lock.start()  # the lock holder is gone
                sent = await engine.send(Job("j1", {}), {"to": ["a"]})
            assert p.sends == 1 and not sent.replayed
    finally:
        lock.cleanup()
        await ledger.aclose()


# -- bad paths and files -------------------------------------------------------------------


async def test_a_missing_directory_is_a_config_error_at_start_and_makes_nothing(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "nope" / "ledger.db")
    with pytest.raises(ConfigError, match=r"directory .*nope does not exist"):
        await ledger.start()
    assert not (tmp_path / "nope").exists()
    with pytest.raises(ConfigError):  # a claim starts it first: the same error, nothing sent
        await ledger.claim(key="k", job_id="j", payload=P1, fingerprint="fp", token="t", lease=30)
    await ledger.aclose()


_AS_OTHER_USER = """
import asyncio, sys
from idemsend import ConfigError
from idemsend.ledger import SQLiteLedger
async def main():
    try:
        await SQLiteLedger(sys.argv[1]).start()
    except ConfigError as exc:
        print("ConfigError:", exc)
asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("mode", "below", "says"), [(0o555, False, "is not writable"), (0o700, True, "cannot be reached")],
    ids=["read-only", "unreachable"],
)
def test_a_read_only_or_unreachable_directory_is_a_config_error_at_start(mode: int, below: bool, says: str) -> None:
    import shutil
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="idemsend-sqlite-ro-"))  # in /tmp, which anyone may enter
    top.chmod(0o755)
    ro = top / "ro"
    ro.mkdir()
    (ro / "sub").mkdir()
    ro.chmod(mode)
    try:
        _check_as_another_user(ro / "sub" if below else ro, says)
    finally:
        ro.chmod(0o755)
        shutil.rmtree(top)


def _check_as_another_user(ro: Path, says: str) -> None:
    command = [sys.executable, "-c", _AS_OTHER_USER, str(ro / "ledger.db")]
    if os.geteuid() == 0:  # root writes anywhere: run the check as nobody
        if not Path("/usr/bin/setpriv").exists():
            pytest.skip("running as root and no setpriv to drop to another user")
        command = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src}
    if os.geteuid() == 0:
        probe = subprocess.run([*command[:4], sys.executable, "-c", "import idemsend.ledger"], capture_output=True,
                               text=True, timeout=60, env=env, check=False)
        if probe.returncode != 0:
            pytest.skip(f"the user nobody cannot import idemsend from this checkout ({src}: a private directory?)")
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert "ConfigError:" in out.stdout, out.stderr[-2000:]
    assert says in out.stdout and str(ro) in out.stdout, out.stdout
    assert not (ro / "ledger.db").exists()


async def test_a_file_that_is_not_a_database_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not a SQLite file, it is a note" * 100)
    ledger = SQLiteLedger(path)
    with pytest.raises(ConfigError, match="is not a SQLite database"):
        await ledger.start()
    await ledger.aclose()


async def test_a_table_of_the_ledgers_name_that_is_not_the_ledgers_is_a_config_error(db: str) -> None:
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE idemsend_ledger (id INTEGER PRIMARY KEY, name TEXT)")
    con.commit()
    con.close()
    ledger = SQLiteLedger(db)
    with pytest.raises(ConfigError, match="is not an idemsend ledger table"):
        await ledger.start()
    await ledger.aclose()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"synchronous": "off"}, "synchronous must be"),
        ({"timeout": 0}, "timeout must be > 0"),
        ({"retention": -1}, "retention must be > 0"),
        ({"table": "Bad-Name"}, "invalid SQLite ledger table name"),
        ({"sweep_batch": 0}, "sweep_batch"),
    ],
)
def test_options_it_cannot_use_are_config_errors(db: str, options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SQLiteLedger(db, **options)


@pytest.mark.parametrize("path", ["", "file:ledger.db?mode=ro", "a\x00b"])
def test_paths_it_cannot_use_are_config_errors(path: str) -> None:
    with pytest.raises(ConfigError):
        SQLiteLedger(path)


async def test_synchronous_normal_is_warned_about(db: str, caplog: pytest.LogCaptureFixture) -> None:
    ledger = SQLiteLedger(db, synchronous="normal")
    with caplog.at_level(logging.WARNING, logger=LEDGER_LOG):
        await ledger.start()
    await ledger.aclose()
    [warning] = [r for r in caplog.records if r.name == LEDGER_LOG]
    assert "synchronous=NORMAL" in warning.getMessage() and warning.__dict__.get("idemsend_code") == "no_durability"


async def test_an_in_memory_ledger_works_and_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    ledger = SQLiteLedger(":memory:")
    with caplog.at_level(logging.WARNING, logger=LEDGER_LOG):
        await ledger.start()
    claim = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint="fp", token="t", lease=30)
    assert isinstance(claim, Claimed) and claim.fresh
    await ledger.aclose()
    assert [r.__dict__.get("idemsend_code") for r in caplog.records if r.name == LEDGER_LOG] == ["no_persistence"]


# -- the network-filesystem check --------------------------------------------------------------

MOUNTS = """\
overlay / overlay rw,relatime,lowerdir=/x 0 0
server:/export /mnt/nfs nfs4 rw,relatime,vers=4.2 0 0
//files/share /mnt/smb cifs rw,relatime 0 0
user@host:/data /home/me/remote fuse.sshfs rw,nosuid 0 0
/dev/sda1 /mnt/nfs/local ext4 rw 0 0
/dev/sdb1 /mnt/with\\040space ext4 rw 0 0
"""


@pytest.mark.parametrize(
    ("path", "fstype", "refused"),
    [
        ("/var/lib/app/ledger.db", "overlay", False),
        ("/mnt/nfs/app/ledger.db", "nfs4", True),
        ("/mnt/nfsx/ledger.db", "overlay", False),  # a prefix of the name is not the mount
        ("/mnt/smb/ledger.db", "cifs", True),
        ("/home/me/remote/ledger.db", "fuse.sshfs", True),
        ("/mnt/nfs/local/ledger.db", "ext4", False),  # a local disk mounted inside the NFS share
        ("/mnt/with space/ledger.db", "ext4", False),
    ],
)
def test_the_filesystem_of_a_path_is_read_from_proc_mounts(path: str, fstype: str, refused: bool) -> None:
    mount = mount_of(path, parse_mounts(MOUNTS))
    assert mount is not None and mount.fstype == fstype
    refusal = network_refusal(path, mount)
    assert (refusal is not None) == refused
    if refusal:
        assert path in refusal and fstype in refusal and "allow_network_fs=True" in refusal


async def test_a_ledger_on_a_network_filesystem_is_refused_at_start_unless_allowed(
    db: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import idemsend.ledger._sqlite._open as module

    here = str(Path(db).resolve().parent)  # noqa: ASYNC240
    monkeypatch.setattr(module, "read_mounts", lambda: [Mount("/", "ext4", "/dev/sda"),
                                                       Mount(here, "nfs", "server:/export")])
    refused = SQLiteLedger(db)
    with pytest.raises(ConfigError, match="network filesystem"):
        await refused.start()
    await refused.aclose()
    assert not Path(db).exists()  # refused before the file was made  # noqa: ASYNC240
    allowed = SQLiteLedger(db, allow_network_fs=True)
    with caplog.at_level(logging.WARNING, logger=LEDGER_LOG):
        await allowed.start()
    await allowed.aclose()
    assert [r.__dict__.get("idemsend_code") for r in caplog.records if r.name == LEDGER_LOG] == ["network_fs"]


def test_an_old_sqlite_is_refused() -> None:
    verdict = judge(store_facts("/x.db", version=(3, 22, 0), journal_mode="wal", synchronous=2, network=None))
    assert verdict.refusal is not None and "SQLite 3.24 or newer" in verdict.refusal
    fine = judge(store_facts("/x.db", version=(3, 40, 1), journal_mode="wal", synchronous=2, network=None))
    assert fine.fit and fine.warnings == ()
    no_wal = judge(store_facts("/x.db", version=(3, 40, 1), journal_mode="delete", synchronous=2, network=None))
    assert [w.code for w in no_wal.warnings] == ["no_wal"]


# -- rows it cannot read, expiry, batching, hostile keys ----------------------------------------


async def test_a_row_it_cannot_read_fails_that_call_alone(ledger: SQLiteLedger) -> None:
    for key in ("bad", "good"):
        await ledger.claim(key=key, job_id=f"j-{key}", payload=P1, fingerprint="fp", token="t", lease=30)
        await ledger.release(key=key, token="t")
    con = sqlite3.connect(ledger.path)
    con.execute("PRAGMA ignore_check_constraints = ON")
    con.execute("UPDATE idemsend_ledger SET state = 'bogus' WHERE key = 'bad'")
    con.commit()
    con.close()
    bad, good = await asyncio.gather(  # one batch, one transaction
        ledger.claim(key="bad", job_id="j-bad", payload=P1, fingerprint="fp", token="t2", lease=30),
        ledger.claim(key="good", job_id="j-good", payload=P1, fingerprint="fp", token="t2", lease=30),
        return_exceptions=True,
    )
    assert isinstance(bad, LedgerUnavailableError) and "malformed" in str(bad) and "bogus" in str(bad)
    assert isinstance(good, Claimed) and not good.fresh


async def test_the_sweep_deletes_expired_rows_which_were_never_answered_as_live(db: str) -> None:
    ledger = SQLiteLedger(db, retention=0.2, sweep_interval=0)
    await ledger.claim(key="k", job_id="j", payload=P1, fingerprint="fp", token="t", lease=30)
    assert await ledger.complete(key="k", token="t", response={"id": "x"}) == "ok"
    await asyncio.sleep(0.3)
    assert await ledger.get("k") is None  # expired: absent before any sweep
    assert await ledger.sweep() == 2  # the record and its job id's note
    assert await ledger.sweep() == 0
    await ledger.aclose()


async def test_concurrent_calls_share_one_transaction(ledger: SQLiteLedger) -> None:
    before = ledger.transactions
    results = await asyncio.gather(*(
        ledger.claim(key=f"k{i}", job_id=f"j{i}", payload=P1, fingerprint="fp", token="t", lease=30)
        for i in range(200)
    ))
    assert all(isinstance(r, Claimed) and r.fresh for r in results)
    assert ledger.transactions - before <= 2, ledger.transactions - before


async def test_keys_with_nul_and_lone_surrogates_are_stored_apart(ledger: SQLiteLedger) -> None:
    one = await ledger.claim(key="a\x00b", job_id="j1", payload=P1, fingerprint="fp", token="t", lease=30)
    two = await ledger.claim(key="a", job_id="j2", payload=P1, fingerprint="fp", token="t", lease=30)
    three = await ledger.claim(key="s\ud800", job_id="j3", payload=P1, fingerprint="fp", token="t", lease=30)
    assert all(isinstance(r, Claimed) and r.fresh for r in (one, two, three))
    assert await ledger.complete(key="a\x00b", token="t", response={"id": "x"}) == "ok"
    a = await ledger.get("a")
    assert a is not None and a.state == "in_flight" and a.job_id == "j2"


async def test_a_key_as_long_as_any_provider_allows_is_stored(ledger: SQLiteLedger) -> None:
    key = "k" * SQLiteLedger.max_key_length
    Engine("http://127.0.0.1:9/x", key="{job_id}", provider=Provider(max_key_length=key.__len__()), ledger=ledger)
    claim = await ledger.claim(key=key, job_id="j", payload=P1, fingerprint="fp", token="t", lease=30)
    assert isinstance(claim, Claimed) and claim.fresh
    record = await ledger.get(key)
    assert record is not None and record.key == key


async def test_a_closed_ledger_says_so(db: str) -> None:
    ledger = SQLiteLedger(db)
    await ledger.start()
    await ledger.aclose()
    await ledger.aclose()  # a second call does nothing
    with pytest.raises(LedgerUnavailableError, match="closed"):
        await ledger.get("k")


# -- the decisions, row by row -------------------------------------------------------------------


def _row(**kw: Any) -> Row:
    base: dict[str, Any] = dict(state="in_flight", job_id="j", fingerprint="fp", body=b"first", first_sent_at=100.0,
                                token="other", lease_until=200.0, response=None, code=None, message=None,
                                expires_at=1e9)
    base.update(kw)
    return Row(**base)


def _claim(token: str = "t") -> Op:
    return Op("claim", "k", ("j", b"second", "fp2", token, 30.0))


def test_decide_claim_in_the_protocols_order() -> None:
    assert decide_claim(_claim(), _row(), "other-key", 150.0)[0] == Unstable("other-key")
    fresh, write = decide_claim(_claim(), None, None, 150.0)
    assert isinstance(fresh, Claimed) and fresh.fresh and fresh.payload == b"second" and write.kind == "fresh"
    busy, write = decide_claim(_claim(), _row(), "k", 150.0)
    assert busy == Busy(50.0) and write.kind == "none"
    taken, write = decide_claim(_claim(), _row(lease_until=150.0), "k", 150.0)  # ran out just now
    assert isinstance(taken, Claimed) and not taken.fresh and taken.payload == b"first" and taken.age == 50.0
    assert write.kind == "take" and not write.note
    ahead, _ = decide_claim(_claim(), _row(token="", first_sent_at=400.0), None, 150.0)  # a clock that went back
    assert isinstance(ahead, Claimed) and ahead.age == 0.0


def test_decide_settle_by_token_and_state() -> None:
    op = Op("complete", "k", ("t", "{}"))
    assert decide_settle("complete", op, None)[0] == "recreated"
    assert decide_settle("complete", op, _row(token="t"))[0] == "ok"
    assert decide_settle("complete", op, _row(token="other"))[0] == "superseded"
    assert decide_settle("complete", op, _row(token="t", state="done"))[0] == "superseded"
    assert decide_settle("renew", Op("renew", "k", ("t", 30.0)), None)[0] == "missing"
    released = Op("release", "k", ("", False))  # a released record's empty token is nobody's
    assert decide_settle("release", released, _row(token=""))[0] == "superseded"
    assert decide_settle("release", Op("release", "k", ("t", True)), _row(token="t"))[1].kind == "delete"


_FORKS = """
import asyncio, os, sys
from idemsend.ledger import Claimed, Done, SQLiteLedger

ledger = SQLiteLedger(sys.argv[1])

async def parent_part():
    await ledger.start()  # the parent uses it: its thread and connection exist
    claim = await ledger.claim(key="p", job_id="jp", payload=b"x", fingerprint="fp", token="tp", lease=30)
    assert isinstance(claim, Claimed)

asyncio.run(parent_part())
pid = os.fork()
if pid == 0:  # the child (RQ's work horse): a loop of its own, the same ledger object
    async def child_part():
        claim = await asyncio.wait_for(ledger.claim(key="c", job_id="jc", payload=b"x", fingerprint="fp",
                                                    token="tc", lease=30), 30)
        assert isinstance(claim, Claimed) and claim.fresh
        assert await ledger.complete(key="c", token="tc", response={"id": "em_c"}) == "ok"
    try:
        asyncio.run(child_part())
    except BaseException as exc:
        print("child failed:", repr(exc), flush=True)
        os._exit(1)
    os._exit(0)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status

async def after():
    assert await ledger.claim(key="c", job_id="jc", payload=b"x", fingerprint="fp", token="t2", lease=30) == (
        Done({"id": "em_c"}, "fp"))
    assert await ledger.complete(key="p", token="tp", response={"id": "em_p"}) == "ok"
    await ledger.aclose()

asyncio.run(after())
print("ok", flush=True)
"""


def test_a_ledger_used_before_a_fork_works_in_the_child_and_the_parent(db: str) -> None:
    """RQ forks a work horse per job: a ledger the parent already used must not hang in
    the child (the parent's thread is not there) nor share the parent's connection."""
    out = subprocess.run([sys.executable, "-c", _FORKS, db], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), (out.stdout, out.stderr[-2000:])


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_file_deleted_or_replaced_under_the_ledger_fails_closed(db: str, how: str) -> None:
    """Workers that kept the old file open and workers that open the new one would be two
    ledgers (a double send): the ledger that sees its file gone refuses to record, and the
    engine sends nothing."""
    ledger = SQLiteLedger(db)
    claim = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint="fp", token="t", lease=30)
    assert isinstance(claim, Claimed)
    for suffix in ("", "-wal", "-shm"):
        Path(db + suffix).unlink(missing_ok=True)  # noqa: ASYNC240
    if how == "replaced":
        other = SQLiteLedger(db)  # a new process makes a new file at the same path
        await other.start()
        await other.aclose()
    with pytest.raises(LedgerUnavailableError, match="was deleted or replaced"):
        await ledger.claim(key="k2", job_id="j2", payload=P1, fingerprint="fp", token="t", lease=30)
    with pytest.raises(LedgerUnavailableError, match="was deleted or replaced"):
        await ledger.get("k")
    async with MockProvider() as p:
        async with Engine(p.emails_url, key="welcome:{job_id}", api_key=p.api_key, ledger=ledger,
                          retry=RetryPolicy(retries=0)) as engine:
            with pytest.raises(RetryableError) as caught:
                await engine.send(Job("j3", {}), {"to": ["a"]})
        assert caught.value.reason == "ledger" and p.stats.requests == 0


async def test_starting_on_an_existing_ledger_takes_no_write_lock(db: str) -> None:
    """RQ starts an engine (and so a ledger) in every job's work horse: on a file whose
    tables exist, start() only reads, so it neither waits for nor takes the write lock."""
    first = SQLiteLedger(db)
    await first.claim(key="k", job_id="j", payload=P1, fingerprint="fp", token="t", lease=30)
    await first.aclose()
    lock = LockedFile(db)
    lock.stop()  # another process holds the write lock
    try:
        second = SQLiteLedger(db, timeout=0.3)
        await second.start()
        record = await second.get("k")
        assert record is not None and record.state == "in_flight"
        with pytest.raises(LedgerUnavailableError, match="busy"):  # a write waits, then fails closed
            await second.claim(key="k2", job_id="j2", payload=P1, fingerprint="fp", token="t", lease=30)
        await second.aclose()
    finally:
        lock.cleanup()


_CLOSE_AT_EXIT = """
import asyncio, atexit, sys, threading
from idemsend.ledger import SQLiteLedger

ledger = SQLiteLedger(sys.argv[1])
loop = asyncio.new_event_loop()
threading.Thread(target=loop.run_forever, daemon=True).start()
asyncio.run_coroutine_threadsafe(ledger.start(), loop).result()
# as the adapters' process-local engine does: close from an atexit callback, after
# concurrent.futures has shut its executors down
atexit.register(lambda: asyncio.run_coroutine_threadsafe(ledger.aclose(), loop).result())
print("started", flush=True)
"""


def test_a_ledger_closed_at_interpreter_exit_closes_cleanly(db: str) -> None:
    out = subprocess.run([sys.executable, "-c", _CLOSE_AT_EXIT, db], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0 and out.stdout.strip() == "started", out.stderr
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr
