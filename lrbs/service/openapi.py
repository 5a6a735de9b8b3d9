"""The OpenAPI document tells the truth about errors: one RFC 9457 `Problem` schema under
application/problem+json for every error an operation can return, instead of FastAPI's HTTPValidationError.

Generated once from the routes, then rewritten here in one pass (the alternative, `responses=` on every route,
would copy the same table into each router). The worker protocol is not part of the public document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from lrbs.contract.resources import JobEvent, Problem
from lrbs.service.errors import PROBLEM_JSON

TAGS = [
    {"name": "jobs", "description": "Submit advice jobs, follow them, read their results, cancel and delete them."},
    {"name": "datasets", "description": "Upload your own data (.npz, CSV, Parquet) for jobs to run on."},
    {"name": "workers", "description": "The workers connected to this service and what each can run."},
    {"name": "health", "description": "Liveness and readiness probes for load balancers and orchestrators."},
]
ERROR_DESCRIPTIONS = {
    "400": "A malformed request (a body that is not JSON, a page_token this API did not issue).",
    "401": "An API key is needed (once any key exists) and was missing, unknown or revoked.",
    "404": "No such resource, or one this key did not create.",
    "409": "The resource is in a state that does not allow this (an ended job, a dataset in use, "
    "a job with no result yet).",
    "413": "The body is larger than this service accepts (the detail names the setting).",
    "422": "The request is well-formed but invalid: `errors` lists each bad field and what is accepted.",
    "429": "A per-key limit is reached; see the Retry-After header.",
    "503": "The database is unavailable or busy; nothing was changed. See the Retry-After header.",
}


def errors_of(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    """The error statuses an operation can really answer."""
    codes = ["401", "413", "503"] if path.startswith("/v1/") else []
    if method in ("post", "delete") or "parameters" in operation or "requestBody" in operation:
        codes.append("422")
    if "{" in path:
        codes.append("404")
    if method == "get" and any(p.get("name") == "page_token" for p in operation.get("parameters", [])):
        codes.append("400")
    if method == "post" and path.endswith(":cancel") or method == "delete":
        codes.append("409")
    if path.endswith("/plots/{plot}"):  # no result yet
        codes.append("409")
    if method == "post" and path in ("/v1/jobs", "/v1/datasets"):
        codes += ["409", "429"] if path == "/v1/datasets" else ["429"]
    if path == "/readyz":
        codes.append("503")
    return sorted(set(codes))


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
            tags=TAGS,
        )
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for model in (Problem, JobEvent):  # bodies no route returns as JSON: referenced from the responses
            found = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(found.pop("$defs", {}))
            schemas[model.__name__] = found
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        components["securitySchemes"] = {
            "apiKey": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key from `lrbs keys create` (needed once any key exists).",
            }
        }
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                for status in [s for s in responses if s.startswith(("4", "5"))]:
                    del responses[status]
                for status in errors_of(path, method, operation):
                    responses[status] = {
                        "description": ERROR_DESCRIPTIONS[status],
                        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
                    }
                if path.startswith("/v1/"):
                    operation["security"] = [{"apiKey": []}, {}]  # {}: open while no key exists
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
