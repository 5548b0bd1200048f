"""Where a request ends (sandgate.core.serving.frame_request): the event loop hands a request to a
thread only once it is whole, and answers broken framing itself."""

from __future__ import annotations

from sandgate.core.serving import MAX_HEADER_BYTES, chunked_end, error_response, frame_request

HEAD = b"POST /mutate/runv HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def test_headers_not_finished_is_incomplete():
    framing = frame_request(HEAD, 1000)
    assert not framing.complete and framing.error is None


def test_content_length_body_complete_only_when_all_bytes_arrived():
    request = HEAD + b"Content-Length: 10\r\n\r\n" + b"0123456789"
    assert not frame_request(request[:-1], 1000).complete
    assert frame_request(request, 1000).complete
    assert frame_request(request + b"GET / HTTP/1.1\r\n", 1000).complete  # pipelined bytes follow


def test_request_without_body_is_complete_at_the_blank_line():
    assert frame_request(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 1000).complete


def test_chunked_body_complete_after_the_last_chunk_and_trailers():
    request = HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\n"
    assert not frame_request(request, 1000).complete
    assert frame_request(request + b"\r\n", 1000).complete
    with_trailer = request + b"X-Sum: 1\r\n"
    assert not frame_request(with_trailer, 1000).complete
    assert frame_request(with_trailer + b"\r\n", 1000).complete


def test_chunked_end_offsets():
    body = b"5\r\nhello\r\n0\r\n\r\nNEXT"
    assert chunked_end(body, 0) == len(body) - 4
    assert chunked_end(b"ffff\r\nab", 0) is None


def test_framing_errors_name_the_problem():
    both = frame_request(HEAD + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc", 1000)
    assert both.error == (400, "both Content-Length and Transfer-Encoding are set")
    assert frame_request(HEAD + b"Content-Length: -1\r\n\r\n", 1000).error[0] == 400
    assert frame_request(HEAD + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n", 1000).error[0] == 400
    assert frame_request(HEAD + b"Transfer-Encoding: gzip\r\n\r\n", 1000).error[0] == 400
    too_big = frame_request(HEAD + b"Content-Length: 1001\r\n\r\n", 1000)
    assert too_big.error == (413, "request body of 1001 bytes exceeds 1000")
    huge = frame_request(HEAD + b"Content-Length: " + b"9" * 4000 + b"\r\n\r\n", 1000)
    assert huge.error[0] == 413
    assert frame_request(HEAD + b"X: " + b"a" * MAX_HEADER_BYTES, 1000).error[0] == 431


def test_expect_continue_is_noticed():
    assert frame_request(HEAD + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\n", 1000).expect_continue


def test_error_response_is_a_closing_json_answer():
    raw = error_response(408, "request not received within 5s")
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"Connection: close" in head and f"Content-Length: {len(body)}".encode() in head
    assert body == b'{"error": "request not received within 5s"}'
