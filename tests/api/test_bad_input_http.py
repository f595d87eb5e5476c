"""Hostile requests sent byte for byte to the real API under uvicorn (no client normalising
`..` or re-encoding): no 5xx, JSON errors, and nothing served from outside the data folder."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import pytest

PASSWD_MARK = b"root:"


def send(base: str, target: str, method: str = "GET", body: bytes = b"") -> tuple[int, str, bytes]:
    """One raw HTTP/1.1 request; (status, content type, body)."""
    url = urlsplit(base)
    assert url.hostname is not None and url.port is not None
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode("latin-1") + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    header, _, content = raw.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = dict(line.partition(": ")[::2] for line in lines[1:])
    types = {k.lower(): v for k, v in fields.items()}
    return status, types.get("content-type", ""), content


@pytest.mark.parametrize(
    "target",
    [
        "/api/v1/faces/../../../../etc/passwd/crop",
        "/api/v1/faces/..%2F..%2F..%2F..%2Fetc%2Fpasswd/crop",
        "/api/v1/faces/..%252F..%252Fetc%252Fpasswd/crop",
        "/api/v1/faces/%2E%2E/crop",
        "/api/v1/faces/%2Fetc%2Fpasswd/crop",
        "/api/v1/faces/..%5C..%5Cetc%5Cpasswd/crop",
        "/api/v1/faces/" + "a" * 20_000 + "/crop",
        "/api/v1/training/sessions/../../progress-unified",
        "/api/v1/training/sessions/..%2F..%2F/progress-unified",
        "/api/v1/training/sessions/%00/progress",
        "/api/v1/face-sessions/..%2F..%2Fetc%2Fpasswd",
        "/static/../../../../etc/passwd",
        "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/sessions/..%2F..%2Fetc%2Fpasswd",
        "/../../../../etc/passwd",
    ],
)
def test_traversal_never_serves_files(served_api: str, target: str) -> None:
    status, content_type, body = send(served_api, target)
    assert status in {404, 422}, (target, status, body[:200])
    assert content_type == "application/json"
    assert "detail" in json.loads(body)
    assert PASSWD_MARK not in body


def test_traversal_in_control_routes(served_api: str) -> None:
    for target in ("/api/v1/training/sessions/../../cancel",
                   "/api/v1/training/sessions/..%2F..%2F/pause"):
        status, content_type, _ = send(served_api, target, "POST")
        assert status in {404, 405, 422} and content_type == "application/json", target


def test_huge_query_is_a_short_422(served_api: str) -> None:
    status, content_type, body = send(served_api, "/api/v1/search?q=" + "x" * 100_000)
    assert status == 422 and content_type == "application/json"
    assert len(body) < 1000
    assert "at most 500 characters (got 100000 characters)" in json.loads(body)["detail"]


@pytest.mark.parametrize(
    "query",
    ["%F0%9F%90%B6%20on%20the%20beach", "%E7%8A%AC%E3%81%A8%E7%8C%AB", "%FF%FE", "caf%C3%A9",
     "%E2%80%AE", "a+b+c"],
)
def test_real_search_reads_any_unicode(served_api: str, query: str) -> None:
    """The tiny CLIP model's tokenizer takes emoji, CJK, bidi marks and invalid UTF-8."""
    status, content_type, body = send(served_api, f"/api/v1/search?q={query}&k=5")
    assert status == 200, body[:300]
    assert content_type == "application/json"
    assert json.loads(body)["k"] == 5


@pytest.mark.parametrize("query", ["%00", "a%00b", "%1B%5B2J", "%20%20", "%09"])
def test_real_search_refuses_control_characters_and_blanks(served_api: str, query: str) -> None:
    status, _, body = send(served_api, f"/api/v1/search?q={query}")
    assert status == 422, body[:300]
    assert json.loads(body)["detail"].startswith("Invalid request: query parameter 'q'")


def test_unknown_face_in_the_real_catalog_is_404(served_api: str) -> None:
    status, content_type, body = send(served_api, "/api/v1/faces/0123456789abcdef0123/crop")
    assert status in {404, 503}, body
    assert content_type == "application/json"
