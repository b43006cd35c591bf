"""Errors as one JSON shape: ``{"error": "<one line>", "status": N}`` (plus leader hints for 503s).

Every bad request is a 4xx naming what is wrong; a proposal that does not fit the state is a 409;
a write that can not be committed now (no leader, no quorum, conf change in flight) is a 503. When
the answering node knows a Raft leader other than itself, the 503 names it: ``leader`` (its Raft
address, kept for compatibility), ``leader_name`` and ``leader_api`` (``http://host:port``, where an
operator or client can retry), and a ``Location`` header with the same request on the leader. The
message says it too, because ``ramctrl`` shows only the message. A 500 means a bug here, never bad
input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.types import ExceptionHandlersMap

from ram.api.schemas import ErrorBody
from ram.api.views import leader_api_url, raft_leader_name
from ram.cluster.node import ClusterNode
from ram.consensus.core import ConfChangeInProgress
from ram.consensus.runtime.errors import CommandRefused, NoLeaderError, ProposalError, ProposalTimeout

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


@dataclass(frozen=True)
class LeaderHint:
    """Where the Raft leader is, for a 503 answered by another node."""

    name: str | None
    raft_address: str | None
    api: str | None


def leader_hint(node: ClusterNode | None, leader_id: int = 0) -> LeaderHint | None:
    """The leader ``leader_id`` (default: the one ``node`` knows), unless unknown or ``node`` itself:
    sending an operator back to the node that just refused would help nobody."""
    if node is None:
        return None
    leader = leader_id or node.leader_id
    if not leader or leader == node.config.node_id:
        return None
    name = next((m.name for m in node.state.members.values() if m.node_id == leader), None)
    if name is None and leader == node.leader_id:
        name = raft_leader_name(node)
    return LeaderHint(name=name, raft_address=node.address_of(leader), api=leader_api_url(node, leader))


def error_response(
    status: int,
    message: str,
    *,
    leader: str | None = None,
    headers: dict[str, str] | None = None,
    hint: LeaderHint | None = None,
    path: str = "",
) -> Response[dict[str, Any]]:
    """The JSON error; with ``hint``, the leader's name, Raft address and API (``path`` appended in
    the ``Location`` header: the same request, on the leader)."""
    body: dict[str, Any] = {"error": one_line(message), "status": status}
    if hint is not None:
        leader = leader or hint.raft_address
        if hint.name is not None:
            body["leader_name"] = hint.name
        if hint.api is not None:
            body["leader_api"] = hint.api
            headers = {**(headers or {}), "Location": hint.api + path}
            if hint.api not in message:
                body["error"] = one_line(f"{message} (leader API: {hint.api})")
    if leader is not None:
        body["leader"] = leader
    return Response(content=body, status_code=status, media_type=MediaType.JSON, headers=headers)


def _node_of(request: Request[Any, Any, Any]) -> ClusterNode | None:
    ctx = getattr(request.app.state, "ctx", None)
    node = getattr(ctx, "node", None)
    return node if isinstance(node, ClusterNode) else None


def _request_path(request: Request[Any, Any, Any]) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


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


def _api_error(request: Request[Any, Any, Any], exc: ApiError) -> Response[dict[str, Any]]:
    hint = leader_hint(_node_of(request)) if exc.status == 503 else None
    return error_response(
        exc.status, exc.message, leader=exc.leader, headers=exc.headers or None, hint=hint, path=_request_path(request)
    )


def _proposal_error(request: Request[Any, Any, Any], exc: ProposalError) -> Response[dict[str, Any]]:
    return proposal_error_response(exc, _node_of(request), _request_path(request))


def proposal_error_response(
    exc: Exception, node: ClusterNode | None = None, path: str = ""
) -> Response[dict[str, Any]]:
    """409 for a refused command; 503 (retry later, or on the leader named in the answer) otherwise."""
    if isinstance(exc, CommandRefused):
        return error_response(409, f"refused: {exc}")
    retry = {"Retry-After": "1"}
    if isinstance(exc, NoLeaderError):
        hint = leader_hint(node, exc.leader_id)
        return error_response(
            503, f"cannot commit now: {exc}", leader=exc.leader_address, headers=retry, hint=hint, path=path
        )
    hint = leader_hint(node)
    if isinstance(exc, ProposalTimeout):
        return error_response(503, f"not committed: {exc}", headers=retry, hint=hint, path=path)
    if isinstance(exc, ConfChangeInProgress):
        return error_response(
            503, f"membership change not possible right now: {exc}; retry shortly", headers=retry, hint=hint,
            path=path,
        )
    return error_response(503, f"cannot commit now: {exc}", headers=retry, hint=hint, path=path)


def _conf_change(request: Request[Any, Any, Any], exc: ConfChangeInProgress) -> Response[dict[str, Any]]:
    return proposal_error_response(exc, _node_of(request), _request_path(request))


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
    401: "A token is needed (`Authorization: Bearer <token>`) and was missing or not valid.",
    403: "The token's role does not allow this request (writes need `admin`), or the client address is not "
    "allowed (`api.allowed_clients`).",
    404: "Unknown member or path.",
    409: "The command does not fit the cluster state; nothing changed.",
    415: "A write's body must be `application/json`.",
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
