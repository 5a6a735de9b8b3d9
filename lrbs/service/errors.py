"""RFC 9457 problem details: every error the API returns is application/problem+json."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("lrbs.service")
RETRY_AFTER_SECONDS = 5

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://lrbs.dev/problems/"


class Problem(Exception):
    """An error a user can act on: `detail` says what was wrong and what is accepted."""

    status = 400
    title = "Bad request"
    type = "bad-request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFound(Problem):
    status, title, type = 404, "Not found", "not-found"


class Conflict(Problem):
    status, title, type = 409, "Conflict", "conflict"


class LeaseLost(Conflict):
    title, type = "Lease lost", "lease-lost"


class Unprocessable(Problem):
    status, title, type = 422, "Invalid request", "validation-error"


class Unauthorized(Problem):
    status, title, type = 401, "Unauthorized", "unauthorized"


class TooManyRequests(Problem):
    status, title, type = 429, "Too many requests", "too-many-requests"


class TooLarge(Problem):
    status, title, type = 413, "Content too large", "too-large"


def problem_response(request: Request, status: int, title: str, detail: str, type_: str, **extra: Any) -> JSONResponse:
    body = {
        "type": TYPE_BASE + type_,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extra,
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _location(loc: tuple[Any, ...]) -> str:
    """('body', 'optimizer', 'params') → 'optimizer.params'; discriminator tags are dropped."""
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(p for p in parts if not p.startswith("function-")) or "body"


def validation_errors(errors: list[dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    for e in errors:
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        out.append({"field": _location(tuple(e.get("loc", ()))), "message": msg})
    return out


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        extra = dict(exc.extra)
        retry_after = extra.pop("retry_after", None)
        response = problem_response(request, exc.status, exc.title, exc.detail, exc.type, **extra)
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(list(exc.errors()))
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem_response(request, 422, "Invalid request", detail, "validation-error", errors=errors)

    @app.exception_handler(OperationalError)
    @app.exception_handler(SQLAlchemyTimeoutError)
    async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        """Database unreachable, or SQLite locked past the busy timeout: try again shortly, nothing was lost."""
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, str(exc).splitlines()[0])
        response = problem_response(
            request,
            503,
            "Service unavailable",
            "the database is unavailable or busy right now; nothing was changed, try again in a few seconds",
            "unavailable",
        )
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
        detail = str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}; see /docs for the API"
        return problem_response(request, exc.status_code, title, detail, f"http-{exc.status_code}")
