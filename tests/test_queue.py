"""The queue's state machine on a real database (SQLite and PostgreSQL), as a worker would drive it."""

import threading
import time

import pytest
from sqlalchemy import text

from lrbs.contract.job_spec import JobSpec
from lrbs.contract.resources import Progress
from lrbs.contract.results import Curve, Environment, Result, SuggestionOut
from lrbs.service import queue
from lrbs.service.db import transaction
from lrbs.service.errors import Conflict, LeaseLost, TooManyRequests
from lrbs.service.settings import Settings
from lrbs.service.tables import JobRow
from tests.conftest import MINIMAL_SPEC

SPEC = JobSpec.model_validate(MINIMAL_SPEC)


def a_result() -> Result:
    return Result(
        curve=Curve(lr=[1e-3, 1e-2], loss=[2.0, 1.0], smoothed_loss=[2.0, 1.5]),
        suggestions={"valley": SuggestionOut(lr=1e-2, reason="test")},
        stop_reason="completed",
        steps_run=2,
        wall_time_s=0.1,
        environment=Environment(device="cpu", torch="x", python="x", lrbs="x"),
    )


def submit(sessions, settings, n=1):
    with transaction(sessions) as session:
        return [queue.submit(session, SPEC, settings).id for _ in range(n)]


def claim(sessions, settings, worker="w1"):
    with transaction(sessions) as session:
        return queue.claim(session, worker, settings)


def state(sessions, job_id):
    with transaction(sessions) as session:
        return queue.get(session, job_id)


def test_claim_takes_the_oldest_once(sessions, settings):
    first, second = submit(sessions, settings, 2)
    job = claim(sessions, settings)
    assert job.id == first and job.state == "running" and job.attempts == 1 and job.lease_token
    assert claim(sessions, settings).id == second
    assert claim(sessions, settings) is None


def test_heartbeat_extends_the_lease_and_brings_back_cancellation(sessions, settings):
    (job_id,) = submit(sessions, settings)
    lease = claim(sessions, settings)
    progress = Progress(phase="lr_range", step=5, total=10, fraction=0.5)
    with transaction(sessions) as session:
        assert queue.heartbeat(session, job_id, lease.lease_token, progress, settings) is False
    assert state(sessions, job_id).progress["step"] == 5
    with transaction(sessions) as session:
        queue.cancel(session, job_id)
    with transaction(sessions) as session:
        assert queue.heartbeat(session, job_id, lease.lease_token, None, settings) is True
    with transaction(sessions) as session:
        queue.mark_cancelled(session, job_id, lease.lease_token)
    assert state(sessions, job_id).state == "cancelled"


def test_complete_is_fenced_and_idempotent(sessions, settings):
    (job_id,) = submit(sessions, settings)
    lease = claim(sessions, settings)
    with transaction(sessions) as session, pytest.raises(LeaseLost):
        queue.complete(session, job_id, "not-the-lease", a_result())
    for _ in range(2):  # a repeated delivery of the same report changes nothing
        with transaction(sessions) as session:
            queue.complete(session, job_id, lease.lease_token, a_result())
    job = state(sessions, job_id)
    assert job.state == "succeeded" and job.result["steps_run"] == 2 and job.finished_at
    assert job.progress["phase"] == "done" and job.progress["fraction"] == 1.0


def test_retryable_failures_requeue_until_attempts_run_out(sessions, settings):
    settings.max_attempts = 2
    (job_id,) = submit(sessions, settings)
    for attempt, expected in [(1, "queued"), (2, "failed")]:
        lease = claim(sessions, settings)
        assert lease.attempts == attempt
        with transaction(sessions) as session:
            queue.fail(session, job_id, lease.lease_token, "worker shut down", retryable=True, kind="shutdown")
        job = state(sessions, job_id)
        assert job.state == expected
        assert job.error == {"message": "worker shut down", "kind": "shutdown", "attempt": attempt}


def test_a_job_error_fails_at_once(sessions, settings):
    (job_id,) = submit(sessions, settings)
    lease = claim(sessions, settings)
    with transaction(sessions) as session:
        queue.fail(session, job_id, lease.lease_token, "no CUDA here", retryable=False, kind="invalid_job")
    job = state(sessions, job_id)
    assert job.state == "failed" and job.error["kind"] == "invalid_job"


def test_an_expired_lease_requeues_and_fences_out_the_old_worker(sessions, settings):
    settings.lease_seconds = 0.2
    (job_id,) = submit(sessions, settings)
    old = claim(sessions, settings, "w1")
    time.sleep(0.4)
    with transaction(sessions) as session:
        assert queue.reap(session) == 1
    job = state(sessions, job_id)
    assert job.state == "queued" and "lease expired" in job.error["message"]
    settings.lease_seconds = 30
    new = claim(sessions, settings, "w2")
    assert new.id == job_id and new.attempts == 2
    with transaction(sessions) as session, pytest.raises(LeaseLost):
        queue.heartbeat(session, job_id, old.lease_token, None, settings)
    with transaction(sessions) as session, pytest.raises(LeaseLost):
        queue.complete(session, job_id, old.lease_token, a_result())
    with transaction(sessions) as session:
        queue.complete(session, job_id, new.lease_token, a_result())
    assert state(sessions, job_id).state == "succeeded"


def test_reaping_a_cancelled_job_ends_it_cancelled(sessions, settings):
    settings.lease_seconds = 0.1
    (job_id,) = submit(sessions, settings)
    claim(sessions, settings)
    with transaction(sessions) as session:
        queue.cancel(session, job_id)
    time.sleep(0.3)
    with transaction(sessions) as session:
        queue.reap(session)
    assert state(sessions, job_id).state == "cancelled"


def test_cancel(sessions, settings):
    queued, running = submit(sessions, settings, 2)
    with transaction(sessions) as session:
        assert queue.cancel(session, queued).state == "cancelled"
    lease = claim(sessions, settings)
    assert lease.id == running  # the cancelled job is never claimed
    with transaction(sessions) as session:
        job = queue.cancel(session, running)
        assert job.state == "running" and job.cancel_requested
    with transaction(sessions) as session:
        queue.complete(session, running, lease.lease_token, a_result())
    with transaction(sessions) as session, pytest.raises(Conflict):
        queue.cancel(session, running)


def test_concurrent_claimers_never_share_a_job(sessions, settings):
    ids = submit(sessions, settings, 30)
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer(name):
        while True:
            job = claim(sessions, settings, name)
            if job is None:
                return
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)  # every job once, none twice


def test_list_is_newest_first_with_keyset_pages(sessions, settings):
    ids = submit(sessions, settings, 7)
    with transaction(sessions) as session:
        queue.cancel(session, ids[0])
    seen, token = [], None
    while True:
        with transaction(sessions) as session:
            page, token = queue.list_jobs(session, None, 3, token)
        seen += [j.id for j in page]
        if token is None:
            break
    assert seen == ids[::-1]
    with transaction(sessions) as session:
        cancelled, _ = queue.list_jobs(session, "cancelled", 10, None)
    assert [j.id for j in cancelled] == [ids[0]]


def test_a_claim_never_started_goes_back_without_using_an_attempt(sessions, settings):
    settings.max_attempts = 1
    unstarted, started = submit(sessions, settings, 2)
    first, second = claim(sessions, settings), claim(sessions, settings)
    with transaction(sessions) as session:
        queue.heartbeat(session, second.id, second.lease_token, None, settings)
    with transaction(sessions) as session:
        assert queue.release_unstarted(session, grace_seconds=3600) == 0  # still within the grace period
    with transaction(sessions) as session:
        assert queue.release_unstarted(session, grace_seconds=0) == 1
    job = state(sessions, unstarted)
    assert job.state == "queued" and job.attempts == 0 and job.worker_id is None
    assert state(sessions, started).state == "running"  # it heartbeated: its worker is alive
    again = claim(sessions, settings)
    assert again.id == unstarted and again.attempts == 1  # max_attempts=1 still lets it run once
    with pytest.raises(LeaseLost), transaction(sessions) as session:  # the first worker's token is dead
        queue.heartbeat(session, unstarted, first.lease_token, None, settings)


def test_readers_do_not_wait_for_a_writer(database_url):
    """A reading transaction answers while another transaction holds the write lock (SQLite: a deferred BEGIN
    on a WAL snapshot); a writing one waits for it, and here, with a 0.3 s lock timeout, fails."""
    from sqlalchemy import func, select
    from sqlalchemy.exc import OperationalError

    from lrbs.service.db import make_engine, make_sessionmaker, reading, transaction, upgrade
    from lrbs.service.tables import JobRow

    engine = make_engine(database_url, timeout_seconds=0.3)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    try:
        with transaction(sessions) as writer:
            writer.execute(select(JobRow.id).limit(1)).all()  # SQLite: the write lock is taken here
            with reading(sessions) as reader:
                assert reader.scalar(select(func.count()).select_from(JobRow)) == 0
            if database_url.startswith("sqlite"):
                with pytest.raises(OperationalError, match="locked"), transaction(sessions) as second_writer:
                    second_writer.execute(select(JobRow.id).limit(1)).all()
    finally:
        engine.dispose()


def test_a_connection_that_served_reads_still_rolls_a_failed_write_back(database_url):
    """`reading` runs without a transaction on PostgreSQL (autocommit: no BEGIN and COMMIT round trips); the pooled
    connection it used must come back transactional, or a failed write would keep its first statements."""
    from sqlalchemy import func, select

    from lrbs.service.db import make_engine, make_sessionmaker, reading, upgrade
    from lrbs.service.tables import JobRow

    engine = make_engine(database_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    try:
        for _ in range(3):  # the pool hands the same connection back each time: one thread, nothing else open
            with reading(sessions) as reader:
                before = reader.scalar(select(func.count()).select_from(JobRow))
                if engine.dialect.name == "postgresql":
                    assert reader.connection().connection.dbapi_connection.autocommit
            with pytest.raises(RuntimeError), transaction(sessions) as writer:
                queue.submit(writer, SPEC, Settings(database_url=database_url))
                writer.flush()
                raise RuntimeError("the rest of the write failed")
            with reading(sessions) as reader:
                assert reader.scalar(select(func.count()).select_from(JobRow)) == before
    finally:
        engine.dispose()


def test_a_submit_counts_its_keys_active_jobs_up_to_the_limit_from_an_index(sessions, settings):
    """The per-key limit is checked under the write lock on every submit: it must not read every job the key made
    (that grew with the key's jobs, 1 ms at 2,000 queued). On SQLite the plan is a covering-index search."""
    settings.max_active_jobs_per_key = 3
    with transaction(sessions) as session:
        for _ in range(3):
            queue.submit(session, SPEC, settings, owner_key_id="team-a")
        queue.submit(session, SPEC, settings, owner_key_id="team-b")  # another key's jobs do not count
        with pytest.raises(TooManyRequests, match="has 3 queued or running jobs"):
            queue.submit(session, SPEC, settings, owner_key_id="team-a")
        if session.bind.dialect.name == "sqlite":
            count = queue._ACTIVE_JOBS_OF_KEY.params(owner="team-a", most=3)
            sql = count.compile(session.bind, compile_kwargs={"literal_binds": True})
            plan = session.execute(text(f"EXPLAIN QUERY PLAN {sql}")).all()
            assert any("COVERING INDEX ix_jobs_owner_state" in row[-1] for row in plan), plan


def test_a_keys_submit_stores_every_column_the_open_submit_does(sessions, settings):
    """A key's submit inserts through INSERT ... SELECT over a fixed list of columns: the row it stores must hold
    every value the plain insert stores (a column left off that list would come back empty)."""
    columns = [column.key for column in JobRow.__table__.columns]
    with transaction(sessions) as session:
        open_job = queue.submit(session, SPEC, settings)
        keyed_job = queue.submit(session, SPEC, settings, owner_key_id="team-a")
    with transaction(sessions) as session:
        for made in (open_job, keyed_job):
            stored = session.get(JobRow, made.id)
            assert stored is not None
            assert {c: getattr(stored, c) for c in columns} == {c: getattr(made, c, None) for c in columns}
