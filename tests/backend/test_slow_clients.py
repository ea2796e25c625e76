"""Slow and hostile clients: the buffering front of `backend.http_worker`, its framing rules,
and the real gunicorn server answering /health within 1 s while 16 slow connections are open
(issue 16, 3)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from backend_helpers import build_tiny_checkpoint
from process_helpers import BackendProcess

from backend.http_worker import MAX_HEAD_BYTES, Refusal, RequestBuffer


def _feed(buffer: RequestBuffer, data: bytes, step: int = 0):
    """Feed `data` at once, or `step` bytes at a time; the outcome of the last feed."""
    if not step:
        return buffer.feed(data)
    outcome = None
    for i in range(0, len(data), step):
        outcome = buffer.feed(data[i : i + step])
        if outcome is not None and i + step < len(data):
            raise AssertionError(f"decided after {i + step} of {len(data)} bytes: {outcome}")
    return outcome


HEAD = b"POST /webhook HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize("step", [0, 1, 7])
def test_a_request_is_complete_only_when_all_of_it_arrived(step):
    get = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    assert _feed(RequestBuffer(100), get, step) is True
    body = b'{"a": 1}'
    sized = HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body
    assert _feed(RequestBuffer(100), sized, step) is True
    chunked = HEAD + b'Transfer-Encoding: chunked\r\n\r\n4;ext=1\r\n{"a"\r\n4\r\n: 1}\r\n0\r\n\r\n'
    assert _feed(RequestBuffer(100), chunked, step) is True
    trailers = chunked[:-2] + b"X-Trailer: 1\r\n\r\n"
    assert _feed(RequestBuffer(100), trailers, step) is True
    buffer = RequestBuffer(100)
    assert buffer.feed(sized[:-1]) is None and buffer.feed(sized[-1:]) is True


def test_bodies_over_the_limit_and_bad_framing_are_refused():
    def refusal(data: bytes, max_body: int = 10) -> Refusal:
        outcome = RequestBuffer(max_body).feed(data)
        assert isinstance(outcome, Refusal), outcome
        return outcome

    assert refusal(HEAD + b"Content-Length: 11\r\n\r\n").status == 413  # before the body
    big_chunks = HEAD + b"Transfer-Encoding: chunked\r\n\r\n6\r\n123456\r\n6\r\n"
    assert refusal(big_chunks).status == 413
    assert refusal(HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n").status == 400
    assert refusal(HEAD + b"Transfer-Encoding: chunked\r\n\r\n1\r\nabc").status == 400
    assert refusal(b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * MAX_HEAD_BYTES).status == 431
    response = refusal(HEAD + b"Content-Length: 99\r\n\r\n").response()
    assert response.startswith(b"HTTP/1.1 413 ") and b"MAX_CONTENT_LENGTH=10" in response
    # ambiguous framing goes to gunicorn's parser (which answers 400) at the header's end
    for ambiguous in (
        HEAD + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n",
        HEAD + b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        HEAD + b"Transfer-Encoding: gzip\r\n\r\n",
        HEAD + b"Content-Length: -1\r\n\r\n",
    ):
        assert RequestBuffer(10).feed(ambiguous) is True


def test_expect_100_continue_is_answered_by_the_front_only():
    buffer = RequestBuffer(100)
    assert buffer.feed(HEAD + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n") is None
    assert buffer.wants_continue
    assert buffer.feed(b"{}") is True
    assert b"expect" not in bytes(buffer.data).lower()
    assert bytes(buffer.data).endswith(b"Content-Length: 2\r\n\r\n{}")


# ---- the real server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slow")
    checkpoint = build_tiny_checkpoint(tmp / "ckpt")
    env = {
        "CLIPSEG_MODEL": str(checkpoint),
        "MODEL_DIR": str(tmp / "data"),
        "THREADS": "4",
        "WORKERS": "1",
        "CLIPSEG_HEADER_TIMEOUT": "3",
        "CLIPSEG_BODY_TIMEOUT": "6",
        "MAX_CONTENT_LENGTH": "100000",
    }
    with BackendProcess(env, tmp / "server.log") as process:
        yield process


def _connect(server: BackendProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _timed_health(server: BackendProcess) -> float:
    start = time.monotonic()
    assert server.get("/health", timeout=5)["status"] == "UP"
    return time.monotonic() - start


def _response(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_health_answers_within_1_s_while_16_slow_connections_are_open(server):
    stop = threading.Event()
    conns: list[socket.socket] = []
    try:
        for _ in range(6):  # the reproduction: a request line and a header, then nothing
            sock = _connect(server)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            conns.append(sock)
        for _ in range(5):  # a header, then a body that never comes
            sock = _connect(server)
            sock.sendall(HEAD + b"Content-Length: 5000\r\nContent-Type: application/json\r\n\r\n{")
            conns.append(sock)
        trickling = [_connect(server) for _ in range(5)]  # headers a byte at a time
        conns += trickling

        def trickle() -> None:
            text = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 1000
            for byte in text:
                if stop.wait(0.1):
                    return
                for sock in trickling:
                    try:
                        sock.send(bytes([byte]))
                    except OSError:  # answered 408 at CLIPSEG_HEADER_TIMEOUT and closed
                        return

        threading.Thread(target=trickle, daemon=True).start()
        assert len(conns) == 16
        time.sleep(0.5)
        times = [_timed_health(server) for _ in range(8)]
        assert max(times) < 1.0, times
        # the slow ones are answered 408 at their timeouts (3 s for the header, 6 s in all)
        conns[0].settimeout(8)
        assert _response(conns[0]).startswith(b"HTTP/1.1 408 ")
        conns[6].settimeout(8)
        assert b"CLIPSEG_BODY_TIMEOUT" in _response(conns[6])
    finally:
        stop.set()
        for sock in conns:
            sock.close()


def test_the_real_server_refuses_a_chunked_body_over_the_limit(server):
    sock = _connect(server)
    try:
        sock.sendall(HEAD + b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n")
        chunk = b"x" * 50_000
        for _ in range(3):  # 150 kB > MAX_CONTENT_LENGTH=100000
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        answer = _response(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413 ") and b"MAX_CONTENT_LENGTH=100000" in answer


def test_expect_100_continue_and_a_normal_request_through_the_front(server):
    body = b'{"action": "PROJECT_UPDATED", "project": {"id": 1}}'
    sock = _connect(server)
    try:
        sock.sendall(
            HEAD
            + b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body)
        )
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        answer = _response(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"ignored"' in answer
    assert answer.count(b"100 Continue") == 0
    status, body = server.post("/webhook", {"action": "PROJECT_UPDATED", "project": {"id": 1}})
    assert status == 200 and body["status"] == "ignored"
