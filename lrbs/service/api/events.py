"""GET /v1/jobs/{id}/events: a job's state and progress as Server-Sent Events, until it ends.

Each stream reads its job by primary key every LRBS_EVENTS_POLL_SECONDS and sends an event only when something a
watcher sees changed. Reading the database (rather than an in-process signal) keeps it right when workers report
to another replica of the service.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from lrbs.contract.resources import TERMINAL_STATES, JobEvent
from lrbs.service import queue
from lrbs.service.api.deps import CallerDep, SessionsDep, SettingsDep
from lrbs.service.db import reading

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
KEEPALIVE_SECONDS = 15  # a comment line this often keeps proxies from closing an idle stream

SSE_EVENT = {
    "type": "object",
    "required": ["event", "id", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["state", "progress", "end"]},
        "id": {"type": "string", "description": "Send it back as Last-Event-ID to resume."},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/JobEvent"},
        },
        "retry": {"type": "integer"},
    },
}
EVENT_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`text/event-stream`. Each event's `data` is a JobEvent (JSON; see the JobEvent schema). "
        "`event` is `state` for the first event and whenever the state changes, `progress` when only the progress "
        "changed, and `end` for the last event, sent once the job has ended; then the stream closes. Lines "
        "starting with `:` are keep-alives.",
        # OpenAPI 3.1 has an event stream's `schema` describe each event; its `data` is a JobEvent as JSON.
        "content": {"text/event-stream": {"schema": SSE_EVENT}},
    }
}


def event_id(event: JobEvent) -> str:
    """Opaque and equal exactly when nothing a watcher sees has changed: what Last-Event-ID resumes from."""
    seen = event.model_dump_json(exclude={"updated_at"})
    return hashlib.blake2b(seen.encode(), digest_size=8).hexdigest()


@router.get(
    "/{job_id}/events",
    summary="Follow a job live",
    description="Server-Sent Events of the job's state changes and progress (phase, step, total, and during the "
    "range test the latest LR and smoothed loss), ending with an `end` event that carries the final state. "
    "Reconnect with the `Last-Event-ID` header to resume: an unchanged job sends nothing until it changes. "
    "Read the result with GET /v1/jobs/{id} after `end`.",
    response_class=EventSourceResponse,
    responses=EVENT_STREAM_DOC,
)
async def follow_job(
    job_id: str,
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    caller: CallerDep,
    last_event_id: Annotated[
        str | None, Header(max_length=200, description="The `id` of the last event received, to resume.")
    ] = None,
) -> EventSourceResponse:
    def read() -> JobEvent:
        with reading(sessions) as session:
            return JobEvent.model_validate(queue.get(session, job_id, caller), from_attributes=True)

    first = await run_in_threadpool(read)  # an unknown job is a 404 before the stream starts

    async def stream() -> AsyncIterator[ServerSentEvent]:
        event, sent_id, sent_state = first, last_event_id, None
        while True:
            current_id = event_id(event)
            ended = event.state in TERMINAL_STATES
            if ended or current_id != sent_id:
                kind = "end" if ended else "progress" if event.state == sent_state else "state"
                yield ServerSentEvent(data=event.model_dump_json(), event=kind, id=current_id)
                if ended:
                    return
                sent_id, sent_state = current_id, event.state
            await asyncio.sleep(settings.events_poll_seconds)
            if request.app.state.draining or await request.is_disconnected():
                return
            event = await run_in_threadpool(read)

    return EventSourceResponse(stream(), ping=KEEPALIVE_SECONDS)
