"""Errors as one JSON shape: ``{"error": "<one line>", "status": N}`` (plus ``leader`` for 503s).

Every bad request is a 4xx naming what is wrong; a proposal that does not fit the state is a 409;
a write that can not be committed now (no leader, no quorum, conf change in flight) is a 503 with
the leader's address when known. A 500 means a bug here, never bad input.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.types import ExceptionHandlersMap

from ram.api.schemas import ErrorBody
from ram.consensus.core import ConfChangeInProgress
from ram.consensus.runtime.node import CommandRefused, NoLeaderError, ProposalError, ProposalTimeout

log = logging.getLogger("ram.api")

_MAX_MESSAGE = 500


class ApiError(Exception):
    """Raised by handlers for an error answer with a chosen status and message."""

    def __init__(self, status: int, message: str, *, leader: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.leader = leader
        self.headers = headers or {}


def one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 1] + "…"


def error_response(
    status: int, message: str, *, leader: str | None = None, headers: dict[str, str] | None = None
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {"error": one_line(message), "status": status}
    if leader is not None:
        body["leader"] = leader
    return Response(content=body, status_code=status, media_type=MediaType.JSON, headers=headers)


def _describe_validation(exc: ValidationException) -> str:
    extra = exc.extra
    parts: list[str] = []
    if isinstance(extra, list):
        for item in extra:
            if not isinstance(item, dict):
                continue
            message = str(item.get("message", "invalid value"))
            key = item.get("key")
            source = getattr(item.get("source"), "value", item.get("source"))
            if key == "data" and source in (None, "body"):
                parts.append(f"request body: {message}")
            elif key and source in (None, "body"):
                parts.append(f"body field {key!r}: {message}")
            elif key:
                parts.append(f"{source} parameter {key!r}: {message}")
            else:
                parts.append(message)
    if not parts:
        detail = exc.detail or "invalid request"
        if "Validation failed for" in detail:
            detail = "invalid request"
        return detail
    return "invalid request: " + "; ".join(parts)


def _http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    if isinstance(exc, ValidationException):
        message = _describe_validation(exc)
    elif status == 404:
        message = f"not found: {request.method} {request.url.path}"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = exc.detail or "request failed"
        if status == 400 and request.method in ("POST", "PUT", "PATCH", "DELETE"):
            message = f"request body is not valid JSON: {message}"
    headers = dict(exc.headers or {})
    return error_response(status, message, headers=headers or None)


def _api_error(_: Request[Any, Any, Any], exc: ApiError) -> Response[dict[str, Any]]:
    return error_response(exc.status, exc.message, leader=exc.leader, headers=exc.headers or None)


def _proposal_error(_: Request[Any, Any, Any], exc: ProposalError) -> Response[dict[str, Any]]:
    return proposal_error_response(exc)


def proposal_error_response(exc: Exception) -> Response[dict[str, Any]]:
    if isinstance(exc, CommandRefused):
        return error_response(409, f"refused: {exc}")
    if isinstance(exc, NoLeaderError):
        return error_response(
            503, f"cannot commit now: {exc}", leader=exc.leader_address, headers={"Retry-After": "1"}
        )
    if isinstance(exc, ProposalTimeout):
        return error_response(503, f"not committed: {exc}", headers={"Retry-After": "1"})
    if isinstance(exc, ConfChangeInProgress):
        return error_response(
            503, f"membership change not possible right now: {exc}; retry shortly", headers={"Retry-After": "1"}
        )
    return error_response(503, f"cannot commit now: {exc}", headers={"Retry-After": "1"})


def _conf_change(_: Request[Any, Any, Any], exc: ConfChangeInProgress) -> Response[dict[str, Any]]:
    return proposal_error_response(exc)


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.exception("internal error method=%s path=%s", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal error: {type(exc).__name__}: {exc}")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    HTTPException: _http_exception,
    ApiError: _api_error,
    ProposalError: _proposal_error,
    ConfChangeInProgress: _conf_change,
    Exception: _internal,
}


_DESCRIPTIONS = {
    400: "Bad request: invalid parameter or body (the message names the field).",
    404: "Unknown member or path.",
    409: "The command does not fit the cluster state; nothing changed.",
    501: "Not available yet on this node.",
    503: "Not possible right now (no Raft leader, no quorum, or the check is false).",
}


def error_responses(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI documentation of the error answers a handler gives (all with :class:`ErrorBody`)."""
    return {
        code: ResponseSpec(
            data_container=ErrorBody,
            description=_DESCRIPTIONS.get(code, "Error"),
            examples=[Example(value={"error": _DESCRIPTIONS.get(code, "error"), "status": code})],
        )
        for code in codes
    }
