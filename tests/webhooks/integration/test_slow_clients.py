"""Hostile clients against the real webhook (one worker, TLS): quiet, half-open and slow connections
are closed by their deadlines and never keep ordinary requests from being answered. Counts, not timings."""

from __future__ import annotations

import socket
import ssl

import pytest

from bench.slowconn import client_hello, measure
from slow_clients import assert_answered_under_flood
from webhook_harness import review


@pytest.fixture(scope="module")
def hook(start_webhook):
    return start_webhook("--cluster-version", "1.24", "--workers", "1", "--no-namespace-watch",
                         "--tls-handshake-timeout", "2", "--request-timeout", "2")


def _tls(hook) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=hook.ca)
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", hook.port), timeout=10),
                           server_hostname="127.0.0.1")


def _read_all(sock) -> bytes:
    """Everything until the server closes (the socket's 10 s timeout fails the test if it never does)."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def _answers_uid(doc: dict) -> None:
    assert doc["response"]["uid"] == review("01-create-bare-pod")["request"]["uid"]


def test_a_thousand_quiet_connections_leave_ordinary_requests_answered(hook, tmp_path):
    import json

    body = json.dumps(review("01-create-bare-pod")).encode()
    ctx = ssl.create_default_context(cafile=hook.ca)
    result = measure("webhook", hook.port, "/mutate/runv", body, ctx, 1000, 4.0, tmp_path, check=_answers_uid)
    assert_answered_under_flood(result, 40)


def test_idle_connection_after_the_handshake_is_closed(hook):
    with _tls(hook) as sock:
        assert _read_all(sock) == b""


def test_half_finished_handshake_is_closed(hook):
    with socket.create_connection(("127.0.0.1", hook.port), timeout=10) as sock:
        hello = client_hello()
        sock.sendall(hello[: len(hello) // 2])
        assert sock.recv(65536) == b""


def test_unfinished_request_gets_408_with_the_reason(hook):
    with _tls(hook) as sock:
        sock.sendall(b"POST /mutate/runv HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'{"error": "request not received within 2s"}' in answer


def test_broken_framing_is_400_with_the_reason(hook):
    with _tls(hook) as sock:
        sock.sendall(b"POST /mutate/runv HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n{}")
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"both Content-Length and Transfer-Encoding are set" in answer


def test_chunked_pipelined_and_expect_continue_requests_are_answered(hook):
    import json

    body = json.dumps(review("01-create-bare-pod")).encode()
    uid = review("01-create-bare-pod")["request"]["uid"].encode()
    head = b"POST /mutate/runv HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    plain = head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
    with _tls(hook) as sock:
        sock.sendall(chunked + plain)  # two requests in one write
        answer = _read_all(sock)
    assert answer.count(b"HTTP/1.1 200 OK") == 2 and answer.count(uid) == 2
    with _tls(hook) as sock:
        sock.sendall(head + b"Expect: 100-continue\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(body)
        answer = _read_all(sock)
    assert b"HTTP/1.1 200 OK" in answer and uid in answer
