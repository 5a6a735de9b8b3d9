"""The service's shortcuts on its hot paths, and that none of them ever answers with something stale or not yours:
the ended-job body cache, the API-key cache and SQLite's in-process writer queue."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from lrbs.contract.job_spec import JobSpec
from lrbs.contract.resources import Job
from lrbs.service.app import create_app
from lrbs.service.caches import LRU, TTLCache
from lrbs.worker.advise import advise
from tests.conftest import MINIMAL_SPEC
from tests.test_api_keys import create_key
from tests.test_plots import SPEC
from tests.test_plots import finish as complete


def test_the_lru_keeps_within_its_entries_and_bytes_and_drops_the_least_recently_used():
    cache = LRU[bytes](entries=3, max_bytes=10)
    for key in "abc":
        cache.put(key, b"xx")
    assert cache.get("a") == b"xx"  # now the most recently used
    cache.put("d", b"xx")
    assert cache.get("b") is None and cache.get("a") == b"xx"  # b was the least recently used
    cache.put("e", b"x" * 7)  # c, d, a then e: 13 bytes > 10, so the least recently used go until it fits
    assert cache.get("e") == b"x" * 7 and cache.get("c") is None and cache.get("d") is None
    assert cache.get("a") == b"xx"  # used just before: kept
    cache.put("huge", b"x" * 11)  # larger than the whole cache: not kept, nothing evicted for it
    assert cache.get("huge") is None and cache.get("e") == b"x" * 7


def test_the_ttl_cache_forgets_after_its_time_and_keeps_nothing_at_zero():
    cache = TTLCache[str](seconds=0.2, entries=2)
    cache.put("a", "1")
    assert cache.get("a") == "1"
    time.sleep(0.25)
    assert cache.get("a") is None
    for key in "abc":  # full: the oldest makes room
        cache.put(key, key)
    assert cache.get("a") is None and cache.get("c") == "c"
    off = TTLCache[str](seconds=0)
    off.put("a", "1")
    assert off.get("a") is None


def finish(client, headers: dict | None = None) -> str:
    """A job completed through the worker protocol with a real (small) result."""
    spec = {k: v for k, v in SPEC.items() if k not in ("batch_sizes", "lr_scaling")}
    return complete(client, spec, advise(JobSpec.model_validate(spec)), headers)


def test_an_ended_job_is_served_from_memory_but_never_once_deleted_or_to_another_key(client, settings, monkeypatch):
    owner = create_key(monkeypatch, settings, "team-a")
    other = create_key(monkeypatch, settings, "team-b")
    job_id = finish(client, owner)
    first = client.get(f"/v1/jobs/{job_id}", headers=owner)
    assert first.status_code == 200 and first.headers["content-type"] == "application/json"
    assert Job.model_validate_json(first.content).state == "succeeded"  # the contract's shape
    assert client.app.state.job_bodies.get((job_id, "full")) is not None
    assert client.get(f"/v1/jobs/{job_id}", headers=owner).content == first.content  # from the cache
    assert client.get(f"/v1/jobs/{job_id}", headers=other).status_code == 404  # ownership is checked first
    assert client.delete(f"/v1/jobs/{job_id}", headers=owner).status_code == 204
    assert client.get(f"/v1/jobs/{job_id}", headers=owner).status_code == 404  # the database has the last word


def test_a_cached_body_is_not_served_once_the_job_changed(client):
    """The cache holds an ended job's body with its updated_at; a row that moved on is read again."""
    job_id = client.post("/v1/jobs", json=MINIMAL_SPEC).json()["id"]
    client.post(f"/v1/jobs/{job_id}:cancel")
    cancelled = client.get(f"/v1/jobs/{job_id}").json()
    kept = client.app.state.job_bodies.get((job_id, "full"))
    stale = kept._replace(updated_at=kept.updated_at.replace(year=2000), body=b'{"stale": true}')
    client.app.state.job_bodies.put((job_id, "full"), stale)
    assert client.get(f"/v1/jobs/{job_id}").json() == cancelled


def test_a_revoked_key_works_at_most_the_cache_time_on_a_replica_that_knew_it(settings, monkeypatch):
    from click.testing import CliRunner

    from lrbs.cli import main

    settings.api_key_cache_seconds = 0.5
    with TestClient(create_app(settings)) as client:
        key = create_key(monkeypatch, settings, "team-a")
        create_key(monkeypatch, settings, "team-b")  # keys remain, so the API stays closed
        assert client.get("/v1/jobs", headers=key).status_code == 200  # now known to this replica
        assert CliRunner().invoke(main, ["keys", "revoke", "team-a"]).exit_code == 0
        assert client.get("/v1/jobs", headers=key).status_code == 200  # trusted a little longer here...
        time.sleep(0.6)
        assert client.get("/v1/jobs", headers=key).status_code == 401  # ...and no longer


def test_with_no_key_cache_a_revoked_key_fails_at_once(settings, monkeypatch):
    from click.testing import CliRunner

    from lrbs.cli import main

    settings.api_key_cache_seconds = 0
    with TestClient(create_app(settings)) as client:
        key = create_key(monkeypatch, settings, "team-a")
        create_key(monkeypatch, settings, "team-b")
        assert client.get("/v1/jobs", headers=key).status_code == 200
        assert CliRunner().invoke(main, ["keys", "revoke", "team-a"]).exit_code == 0
        assert client.get("/v1/jobs", headers=key).status_code == 401


def test_sqlite_writers_in_one_process_queue_and_all_get_through(tmp_path):
    """Many threads writing at once: each waits its turn on the process's writer lock (woken when the previous
    commits) rather than in SQLite's busy handler; none fails, and the lock's wait is bounded by the timeout."""
    from sqlalchemy import func, select
    from sqlalchemy.exc import OperationalError

    from lrbs.service import queue
    from lrbs.service.db import make_engine, make_sessionmaker, transaction, upgrade
    from lrbs.service.settings import Settings
    from lrbs.service.tables import JobRow

    engine = make_engine(f"sqlite:///{tmp_path / 'w.db'}", timeout_seconds=1)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    spec, settings = JobSpec.model_validate(MINIMAL_SPEC), Settings(max_active_jobs_per_key=10_000)
    errors: list[Exception] = []

    def write() -> None:
        try:
            for _ in range(20):
                with transaction(sessions) as session:
                    queue.submit(session, spec, settings)
        except Exception as exc:  # noqa: BLE001 (collected and asserted below)
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        with transaction(sessions) as session:
            assert session.scalar(select(func.count()).select_from(JobRow)) == 160
            held = threading.Event()

            def second_writer() -> None:
                quick = make_sessionmaker(engine)
                try:
                    with transaction(quick):
                        pass
                except OperationalError as exc:
                    errors.append(exc)
                held.set()

            started = time.monotonic()
            t = threading.Thread(target=second_writer)
            t.start()
            held.wait(10)
            assert time.monotonic() - started >= 0.9  # it waited for the lock, up to the engine's timeout
        t.join()
        assert len(errors) == 1 and "locked" in str(errors[0])
    finally:
        engine.dispose()


def test_list_pages_are_assembled_from_the_same_bodies_full_and_summary(client):
    from lrbs.contract.resources import JobPage

    done = finish(client)
    queued = client.post("/v1/jobs", json=MINIMAL_SPEC).json()["id"]
    for _ in range(2):  # the second time from memory
        full = JobPage.model_validate_json(client.get("/v1/jobs").content)
        summary = JobPage.model_validate_json(client.get("/v1/jobs", params={"view": "summary"}).content)
        assert [j.id for j in full.jobs] == [j.id for j in summary.jobs] == [queued, done]
        assert full.jobs[1].result is not None and full.jobs[1].result.curve is not None
        assert summary.jobs[1].result is not None and summary.jobs[1].result.curve is None
        assert summary.jobs[1].result.recommendation == full.jobs[1].result.recommendation
        assert full.jobs[1] == Job.model_validate_json(client.get(f"/v1/jobs/{done}").content)  # one body, two routes
    page = client.get("/v1/jobs", params={"page_size": 1}).json()
    assert [j["id"] for j in page["jobs"]] == [queued] and page["next_page_token"]
    assert client.delete(f"/v1/jobs/{done}").status_code == 204
    assert [j.id for j in JobPage.model_validate_json(client.get("/v1/jobs").content).jobs] == [queued]


def test_sqlite_writers_of_two_processes_take_turns_on_the_database_file(tmp_path):
    """Two engines on one file stand for two processes (replicas, or the CLI beside the service): their writers
    queue on the file's advisory lock; one waits while the other writes, and fails after its timeout."""
    from sqlalchemy import func, select
    from sqlalchemy.exc import OperationalError

    from lrbs.service.db import make_engine, make_sessionmaker, transaction, upgrade
    from lrbs.service.tables import JobRow

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first, second = make_engine(url, timeout_seconds=0.3), make_engine(url, timeout_seconds=0.3)
    upgrade(first)
    try:
        with (
            transaction(make_sessionmaker(first)),
            pytest.raises(OperationalError, match="locked"),
            transaction(make_sessionmaker(second)),
        ):
            pass
        with transaction(make_sessionmaker(second)) as session:  # its turn once the first is done
            assert session.scalar(select(func.count()).select_from(JobRow)) == 0
        assert (tmp_path / "shared.db-writer").exists()
    finally:
        first.dispose()
        second.dispose()


def test_a_queued_jobs_body_is_kept_while_neither_it_nor_what_it_waits_for_changes(client):
    """A queued job's body is kept too, with its updated_at and its waiting_for: polled, it comes from memory;
    once a worker that can run it comes online (or the row changes), it is built again."""
    from tests.test_scheduling import info, register

    job_id = client.post("/v1/jobs", json=MINIMAL_SPEC).json()["id"]
    first = client.get(f"/v1/jobs/{job_id}").json()
    assert first["waiting_for"] == "any worker; online: none"
    kept = client.app.state.job_bodies.get((job_id, "full"))
    assert kept.waiting_for == first["waiting_for"]
    marked = b'{"from": "memory"}'
    client.app.state.job_bodies.put((job_id, "full"), kept._replace(body=marked))
    assert client.get(f"/v1/jobs/{job_id}").content == marked  # current: served as kept
    assert client.get("/v1/jobs").content.startswith(b'{"jobs":[' + marked)  # and in a list page alike
    # The replica read its online workers again (another list), and the job still waits for the same: kept.
    client.app.state.online_workers.clear()
    assert client.get(f"/v1/jobs/{job_id}").content == marked

    register(client, "cpu-1", info())
    rebuilt = client.get(f"/v1/jobs/{job_id}").json()
    assert rebuilt["id"] == job_id and rebuilt["waiting_for"] is None  # what it waits for changed: built again
    assert client.post(f"/v1/jobs/{job_id}:cancel").status_code == 200
    assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
