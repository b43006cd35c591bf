"""The client's failover rules, with a scripted transport: which failures move on to the next URL."""

from __future__ import annotations

import httpx
import pytest

from ram.cli.ctl_http import EXIT_UNREACHABLE, ApiClient, CtlError, HttpError, Unreachable


def _client(behaviour: dict[str, str], seen: list[str]) -> ApiClient:
    """``behaviour``: host -> "ok" | "refused" | "503" | "timeout" | "html" | "503>HOST" (names HOST's API
    as the leader's)."""

    def handle(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        seen.append(f"{request.method} {host}")
        kind = behaviour[host]
        if kind == "refused":
            raise httpx.ConnectError("Connection refused", request=request)
        if kind == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if kind == "503":
            return httpx.Response(503, json={"error": f"cannot commit now on {host}", "status": 503, "leader": "x:1"})
        if kind.startswith("503>"):
            leader = kind.removeprefix("503>")
            return httpx.Response(503, json={"error": f"not the leader: {host}", "status": 503, "leader": "x:1",
                                             "leader_api": f"http://{leader}:1"})
        if kind == "html":
            return httpx.Response(404, text="<html>nope</html>")
        return httpx.Response(200, json={"host": host})

    listed = [h for h in behaviour if not h.startswith("unlisted")]
    return ApiClient([f"http://{h}:1" for h in listed], transport=httpx.MockTransport(handle))


def test_connect_errors_move_on_and_the_answering_url_is_kept() -> None:
    seen: list[str] = []
    api = _client({"a": "refused", "b": "ok"}, seen)
    assert api.request("GET", "/cluster") == {"host": "b"}
    assert api.request("POST", "/maintenance") == {"host": "b"}
    assert seen == ["GET a", "GET b", "POST b"]


def test_nobody_answers_is_exit_2_naming_every_url() -> None:
    api = _client({"a": "refused", "b": "refused"}, [])
    with pytest.raises(Unreachable) as info:
        api.request("GET", "/cluster")
    assert info.value.exit_code == EXIT_UNREACHABLE
    assert "http://a:1" in info.value.message and "http://b:1" in info.value.message


def test_a_503_is_retried_once_on_another_url() -> None:
    seen: list[str] = []
    assert _client({"a": "503", "b": "ok"}, seen).request("POST", "/maintenance") == {"host": "b"}
    seen.clear()
    with pytest.raises(HttpError) as info:
        _client({"a": "503", "b": "503", "c": "ok"}, seen).request("POST", "/maintenance")
    assert info.value.status == 503 and info.value.message == "cannot commit now on b"
    assert seen == ["POST a", "POST b"]


def test_a_503_naming_the_leader_is_retried_once_there() -> None:
    seen: list[str] = []
    # The leader comes first even when it is not listed, and the answering URL is kept.
    api = _client({"a": "503>unlisted-leader", "b": "ok", "unlisted-leader": "ok"}, seen)
    assert api.request("POST", "/maintenance") == {"host": "unlisted-leader"}
    assert api.urls[0] == "http://unlisted-leader:1"
    seen.clear()
    # A listed leader is tried next (not twice), before the URLs in between.
    assert _client({"a": "503>c", "b": "ok", "c": "ok"}, seen).request("POST", "/maintenance") == {"host": "c"}
    assert seen == ["POST a", "POST c"]
    seen.clear()
    # Once only: a leader that refuses too (and names another) ends it with its own answer.
    with pytest.raises(HttpError) as info:
        _client({"a": "503>c", "b": "ok", "c": "503>b"}, seen).request("POST", "/maintenance")
    assert info.value.message == "not the leader: c" and seen == ["POST a", "POST c"]
    seen.clear()
    # A node naming itself is not asked again; the next URL is.
    assert _client({"a": "503>a", "b": "ok"}, seen).request("POST", "/maintenance") == {"host": "b"}
    assert seen == ["POST a", "POST b"]
    seen.clear()
    # An unreachable leader: the remaining URLs are still tried, and the refusal is what is reported.
    with pytest.raises(HttpError, match="not the leader: a"):
        _client({"a": "503>unlisted-gone", "unlisted-gone": "refused"}, seen).request("POST", "/maintenance")
    assert seen == ["POST a", "POST unlisted-gone"]


def test_a_write_that_may_have_arrived_is_not_repeated() -> None:
    seen: list[str] = []
    with pytest.raises(CtlError, match="may or may not have been applied"):
        _client({"a": "timeout", "b": "ok"}, seen).request("PATCH", "/config", json={"k": 1})
    assert seen == ["PATCH a"]
    seen.clear()
    assert _client({"a": "timeout", "b": "ok"}, seen).request("GET", "/config") == {"host": "b"}


def test_a_non_ram_answer_is_described() -> None:
    with pytest.raises(HttpError, match="HTTP 404 from http://a:1/cluster"):
        _client({"a": "html"}, []).request("GET", "/cluster")


def test_health_503_is_an_answer() -> None:
    seen: list[str] = []
    response = _client({"a": "503"}, seen).send("GET", "/health", ok=(503,))
    assert response.status_code == 503 and seen == ["GET a"]
