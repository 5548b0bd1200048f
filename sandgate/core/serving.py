"""Serving a WSGI app with gunicorn over TLS, with deadlines that a hostile client cannot outwait.

Used by both `sandgate webhook` and `sandgate extender`. The threat: anyone who can open a
connection to the port (a tenant's pod) must not be able to stall the answers the API server or
kube-scheduler is waiting for. gunicorn's stock gthread worker hands every new connection to a
request thread, which then does the TLS handshake and reads the request with blocking calls: a
few connections that stop half-way through a handshake or a request hold every thread.

`DeadlineWorker` keeps the threads for the application only. Its event loop (the acceptor) does
everything a client can slow down, without blocking:
  * the TLS handshake (non-blocking, driven by the poller), within `handshake_timeout`;
  * reading the whole request (headers and body, framed by Content-Length or chunked) into
    memory, within `request_timeout` of the handshake's end or of the request's first byte;
  * waiting on idle keep-alive connections (`keepalive`).
Only a complete request reaches a thread, which parses it from memory with gunicorn's parser,
runs the app and writes the answer (the write has the same deadline). A connection that misses
its deadline is closed (408 when it had started a request); malformed framing gets a 4xx with
the reason. When the worker holds `max_connections`, a new connection evicts the oldest one
still in its handshake, then the oldest idle one, then the oldest slow reader, so a flood of
quiet connections cannot lock the API server out either.
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import logging
import resource
import selectors
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, Callable

from gunicorn import glogging, http, sock as gsock
from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker

from sandgate.core.reloading import ReloadingFiles

log = logging.getLogger("sandgate.serving")

# Defaults of the deadline flags (both commands). kube-apiserver gives a webhook call
# `timeoutSeconds` (10 s shipped) and kube-scheduler an extender call 5 s by default: a client
# that has not finished its handshake or its request by then is not one of them.
HANDSHAKE_TIMEOUT = 3.0
REQUEST_TIMEOUT = 5.0
# Per worker. 1,000 hostile connections must leave room for the real clients; each costs a fd.
MAX_CONNECTIONS = 4096
# Headers larger than this are not an AdmissionReview or ExtenderArgs request.
MAX_HEADER_BYTES = 64 * 1024
# Certificates rotate far less often than connections arrive; stat the files at most this often.
CERT_CHECK_INTERVAL = 1.0
READ_CHUNK = 256 * 1024
NOTIFY_INTERVAL = 1.0

_CRLF2 = b"\r\n\r\n"


# ---- TLS -------------------------------------------------------------------------------------

class CertificateError(RuntimeError):
    """The certificate/key pair cannot be loaded (missing, unreadable, not PEM, or not a pair)."""


def build_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context for `cert_file`/`key_file` that refuses anything older than TLS 1.2."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # TLS 1.0/1.1 have known weaknesses (BEAST, SHA-1 handshake MACs); every supported API server
    # and scheduler (Go >= 1.12 clients) speaks 1.2 and 1.3.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    # Forward-secret AEAD suites only for TLS 1.2 (TLS 1.3 suites are all AEAD already).
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    # HTTP/1.1 only: the request framing below is HTTP/1.1's.
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(certfile=cert_file, keyfile=key_file)
    except FileNotFoundError as exc:
        raise CertificateError(f"{exc.filename}: no such file") from exc
    except PermissionError as exc:
        raise CertificateError(f"{exc.filename}: permission denied") from exc
    except (ssl.SSLError, OSError) as exc:
        raise CertificateError(f"cannot load certificate {cert_file} with key {key_file}: {exc}") from exc
    return context


class ReloadingContext(ReloadingFiles[ssl.SSLContext]):
    """Hands out the current SSLContext, rebuilt when the certificate or key file changes.

    Every accepted connection asks for the context, so a rotated certificate (a Secret volume
    update) serves from the next connection on, while established ones keep what they negotiated.
    A half-finished rotation (new certificate, old key) fails to load; the previous context keeps
    serving and the load is retried on the next check, so rotation never causes an outage.
    """

    def __init__(self, cert_file: str, key_file: str, check_interval: float = CERT_CHECK_INTERVAL):
        self.cert_file = cert_file
        self.key_file = key_file
        super().__init__("certificate", [cert_file, key_file], lambda: build_context(cert_file, key_file),
                         (CertificateError,), check_interval)

    def context(self) -> ssl.SSLContext:
        """The context for a new connection (reloaded first if the files changed)."""
        return self.current


# ---- request framing (pure) ------------------------------------------------------------------

@dataclass(frozen=True)
class Framing:
    """What the bytes received so far on a connection amount to."""

    complete: bool = False
    error: tuple[int, str] | None = None  # (HTTP status, reason) to answer before closing
    expect_continue: bool = False
    body_start: int = 0
    chunked: bool = False


INCOMPLETE = Framing()


def frame_request(buf: bytes | bytearray, max_body: int) -> Framing:
    """Whether `buf` holds a whole HTTP/1.1 request (headers and body), and any framing error.

    Only what is needed to know where the request ends is checked here; gunicorn's parser reads
    the complete request afterwards and answers every other defect with its own 4xx.
    """
    end = buf.find(_CRLF2)
    if end < 0:
        if len(buf) > MAX_HEADER_BYTES:
            return Framing(error=(431, f"request headers exceed {MAX_HEADER_BYTES} bytes"))
        return INCOMPLETE
    if end > MAX_HEADER_BYTES:
        return Framing(error=(431, f"request headers exceed {MAX_HEADER_BYTES} bytes"))
    body_start = end + 4
    lengths: list[bytes] = []
    codings: list[bytes] = []
    expect = False
    for line in bytes(buf[:end]).split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue  # gunicorn rejects it with its own message
        name = name.strip().lower()
        if name == b"content-length":
            lengths.append(value.strip())
        elif name == b"transfer-encoding":
            codings.extend(c.strip().lower() for c in value.split(b","))
        elif name == b"expect":
            expect = value.strip().lower() == b"100-continue"
    if codings:
        if lengths:
            return Framing(error=(400, "both Content-Length and Transfer-Encoding are set"))
        if codings[-1] != b"chunked":
            return Framing(error=(400, f"unsupported Transfer-Encoding {b', '.join(codings).decode('latin-1')!r}"))
        return Framing(complete=chunked_end(buf, body_start) is not None, body_start=body_start,
                       expect_continue=expect, chunked=True)
    if not lengths:
        return Framing(complete=True, body_start=body_start)
    if len(set(lengths)) != 1 or not lengths[0].isdigit():
        return Framing(error=(400, f"invalid Content-Length {b', '.join(lengths).decode('latin-1')!r}"))
    length = int(lengths[0][:20])
    if len(lengths[0]) > 19 or length > max_body:
        return Framing(error=(413, f"request body of {lengths[0][:20].decode()} bytes exceeds {max_body}"))
    return Framing(complete=len(buf) - body_start >= length, body_start=body_start, expect_continue=expect)


def chunked_end(buf: bytes | bytearray, pos: int) -> int | None:
    """The offset just past a chunked body starting at `pos` (trailers included), or None if incomplete."""
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size_text = bytes(buf[pos:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text[:16], 16)
        except ValueError:
            return line_end + 2  # malformed: complete as far as framing goes; the parser says 400
        if size == 0:
            trailer_end = buf.find(b"\r\n", line_end + 2)
            while trailer_end >= 0 and trailer_end != line_end + 2:
                line_end = trailer_end
                trailer_end = buf.find(b"\r\n", line_end + 2)
            return None if trailer_end < 0 else trailer_end + 2
        pos = line_end + 2 + size + 2
        if pos > len(buf):
            return None


def error_response(status: int, reason: str) -> bytes:
    """A complete HTTP/1.1 error answer that closes the connection, with the reason as JSON."""
    body = json.dumps({"error": reason}).encode()
    phrase = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large",
              431: "Request Header Fields Too Large"}.get(status, "Error")
    return (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


# ---- the worker ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """The deadlines and sizes of one server (flags of the command)."""

    handshake_timeout: float = HANDSHAKE_TIMEOUT
    request_timeout: float = REQUEST_TIMEOUT
    keepalive: float = 120.0
    max_connections: int = MAX_CONNECTIONS
    max_body: int = 16 * 1024 * 1024


_HANDSHAKE, _READING, _IDLE, _BUSY, _CLOSED = range(5)


class _Conn:
    __slots__ = ("sock", "client", "server", "state", "buf", "parser", "events", "continued")

    def __init__(self, sock, client, server):
        self.sock = sock
        self.client = client
        self.server = server
        self.state = _HANDSHAKE
        self.buf = bytearray()
        self.parser = None
        self.events = 0
        self.continued = False

    def close(self) -> None:
        self.state = _CLOSED
        try:
            self.sock.close()
        except OSError:
            pass


class DeadlineWorker(ThreadWorker):
    """gunicorn's threaded worker, with handshakes and request reads moved onto its event loop.

    Subclasses set `limits` (see `worker_class`). Request threads run the WSGI app through
    gunicorn's own `handle_request`, so hooks, access logs and max_requests behave as in gthread.
    """

    limits = Limits()

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Insertion order is deadline order: each phase has one duration.
        self.phases: dict[int, OrderedDict] = {_HANDSHAKE: OrderedDict(), _READING: OrderedDict(),
                                               _IDLE: OrderedDict()}

    # -- main loop -------------------------------------------------------------------------------

    def run(self) -> None:
        """Accept, handshake, read and time out connections until told to stop; then drain."""
        self.poller.register(self.method_queue.fileno(), selectors.EVENT_READ, self.method_queue.run_callbacks)
        for listener in self.sockets:
            listener.setblocking(False)
            self.poller.register(listener, selectors.EVENT_READ, self.accept)
        notified = 0.0
        while self.alive:
            # The arbiter only needs a sign of life within its timeout (30 s+); gunicorn's notify is a
            # utime() syscall, which once per loop (once per request) was ~15% of the loop's CPU.
            if time.monotonic() - notified >= NOTIFY_INTERVAL:
                self.notify()
                notified = time.monotonic()
            self.wait_for_and_dispatch_events(timeout=self._next_wakeup())
            if not self.is_parent_alive():
                break
            self._expire()
        for listener in self.sockets:
            self.poller.unregister(listener)
        # A request arriving on a kept-alive connection while we stop is still answered (with
        # "Connection: close"): closing under the API server's feet would fail its call.
        linger = time.monotonic() + 2.0
        for conn in self.phases[_IDLE]:
            self.phases[_IDLE][conn] = min(self.phases[_IDLE][conn], linger)
        stop_by = time.monotonic() + self.cfg.graceful_timeout
        while self.nr_conns > 0 and time.monotonic() < stop_by:
            self.notify()
            self.wait_for_and_dispatch_events(timeout=min(self._next_wakeup(), 1.0))
            self._expire()
        for phase in self.phases.values():
            for conn in list(phase):
                self._close(conn)
        self.tpool.shutdown(wait=False)
        self.poller.close()
        self.method_queue.close()
        for listener in self.sockets:
            listener.close()

    def _next_wakeup(self) -> float:
        now = time.monotonic()
        wakeup = 1.0
        for phase in self.phases.values():
            if phase:
                wakeup = min(wakeup, next(iter(phase.values())) - now)
        return max(wakeup, 0.0)

    def _expire(self) -> None:
        now = time.monotonic()
        for state, phase in self.phases.items():
            while phase:
                conn, deadline = next(iter(phase.items()))
                if deadline > now:
                    break
                if state == _READING and conn.buf:
                    self._reject(conn, 408, f"request not received within {self.limits.request_timeout:g}s")
                else:
                    self._close(conn)

    # -- connection states -------------------------------------------------------------------------

    def _enter(self, conn: _Conn, state: int, timeout: float, events: int = selectors.EVENT_READ) -> None:
        if conn.state in self.phases:
            self.phases[conn.state].pop(conn, None)
        conn.state = state
        self.phases[state][conn] = time.monotonic() + timeout
        self._watch(conn, events)

    def _watch(self, conn: _Conn, events: int) -> None:
        if conn.events == events:
            return
        if conn.events:
            self.poller.modify(conn.sock, events, partial(self._on_event, conn))
        else:
            self.poller.register(conn.sock, events, partial(self._on_event, conn))
        conn.events = events

    def _unwatch(self, conn: _Conn) -> None:
        if conn.events:
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
            conn.events = 0
        if conn.state in self.phases:
            self.phases[conn.state].pop(conn, None)

    def _close(self, conn: _Conn) -> None:
        if conn.state == _CLOSED:
            return
        self._unwatch(conn)
        conn.close()
        self.nr_conns -= 1

    def _reject(self, conn: _Conn, status: int, reason: str) -> None:
        """Best-effort error answer (never blocks), then close."""
        log.debug("request rejected", extra={"status": status, "reason": reason, "remote": conn.client})
        try:
            conn.sock.send(error_response(status, reason))
        except (OSError, ValueError):
            pass
        self._close(conn)

    def accept(self, listener) -> None:
        """Accept what is waiting; each new connection starts its handshake (or request) deadline."""
        for _ in range(64):
            try:
                client_sock, client_addr = listener.accept()
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                    raise
                return
            if self.nr_conns >= self.limits.max_connections:
                self._evict()
            self.nr_conns += 1
            client_sock.setblocking(False)
            conn = _Conn(client_sock, client_addr, listener.getsockname())
            if self.cfg.is_ssl:
                try:
                    conn.sock = gsock.ssl_context(self.cfg).wrap_socket(
                        client_sock, server_side=True, do_handshake_on_connect=False,
                        suppress_ragged_eofs=self.cfg.suppress_ragged_eofs)
                except (OSError, ValueError):
                    conn.state = _READING  # not in a phase yet: just close
                    self._close(conn)
                    continue
                self._enter(conn, _HANDSHAKE, self.limits.handshake_timeout)
            else:
                self._enter(conn, _READING, self.limits.request_timeout)

    def _evict(self) -> None:
        for state in (_HANDSHAKE, _IDLE, _READING):
            if self.phases[state]:
                self._close(next(iter(self.phases[state])))
                return

    def _on_event(self, conn: _Conn, _fileobj) -> None:
        if conn.state == _HANDSHAKE:
            self._handshake(conn)
        elif conn.state in (_READING, _IDLE):
            self._read(conn)

    def _handshake(self, conn: _Conn) -> None:
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._watch(conn, selectors.EVENT_WRITE)
            return
        except (OSError, ValueError):
            self._close(conn)
            return
        self._enter(conn, _READING, self.limits.request_timeout)
        self._read(conn)  # the request may have come with the client's Finished

    def _read(self, conn: _Conn) -> None:
        while True:
            try:
                data = conn.sock.recv(READ_CHUNK)
            except (ssl.SSLWantReadError, BlockingIOError):
                break
            except ssl.SSLWantWriteError:
                self._watch(conn, selectors.EVENT_WRITE)
                return
            except (OSError, ValueError):
                self._close(conn)
                return
            if not data:
                self._close(conn)
                return
            if conn.state == _IDLE:
                self._enter(conn, _READING, self.limits.request_timeout)
            conn.buf += data
            if len(conn.buf) > self.limits.max_body + MAX_HEADER_BYTES:
                self._reject(conn, 413, f"request exceeds {self.limits.max_body} bytes")
                return
        self._watch(conn, selectors.EVENT_READ)
        self._check(conn)

    def _check(self, conn: _Conn) -> None:
        if not conn.buf:
            return
        framing = frame_request(conn.buf, self.limits.max_body)
        if framing.error:
            self._reject(conn, *framing.error)
        elif framing.complete:
            self._dispatch(conn)
        elif framing.expect_continue and not conn.continued:
            # The client waits for this before sending the body (gunicorn's own 100 follows later,
            # which HTTP/1.1 clients accept: any number of 1xx may precede the answer).
            conn.continued = True
            try:
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            except (OSError, ValueError):
                self._close(conn)

    def _dispatch(self, conn: _Conn) -> None:
        self._unwatch(conn)
        conn.state = _BUSY
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader.unread(bytes(conn.buf))
        conn.buf = bytearray()
        conn.continued = False
        self.enqueue_req(conn)

    # -- request threads -------------------------------------------------------------------------

    def handle(self, conn: _Conn) -> bool:
        """Answer the buffered request (runs in a request thread); True to keep the connection."""
        req = None
        try:
            # Blocking with a deadline: a client that does not read its answer times out.
            conn.sock.settimeout(self.limits.request_timeout)
            req = next(conn.parser)
            if not req:
                return False
            return self._keepalive_after(conn, self.handle_request(req, conn))
        except (StopIteration, http.errors.NoMoreData):
            return False
        except ssl.SSLError as exc:
            if exc.args[0] != ssl.SSL_ERROR_EOF:
                self.handle_error(req, conn.sock, conn.client, exc)
        except OSError:
            pass  # peer gone or too slow to take the answer
        except Exception as exc:
            self.handle_error(req, conn.sock, conn.client, exc)
        return False

    def finish_request(self, conn: _Conn, fs) -> None:
        """Back on the event loop after a request: wait for the next one, or close."""
        try:
            keep = (not fs.cancelled()) and fs.result()
        except Exception:
            keep = False
        if not keep or conn.state != _BUSY:
            self._close(conn)
            return
        conn.sock.setblocking(False)
        conn.buf = bytearray(conn.parser.unreader.take_buffered())  # pipelined bytes, if any
        if conn.buf:
            self._enter(conn, _READING, self.limits.request_timeout)
            self._check(conn)
        else:
            idle = self.limits.keepalive if self.alive else 2.0
            self._enter(conn, _IDLE, idle)
            if isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending():
                self._read(conn)


def worker_class(limits: Limits) -> type[DeadlineWorker]:
    """A DeadlineWorker subclass carrying `limits` (gunicorn instantiates the class itself)."""
    return type("SandgateWorker", (DeadlineWorker,), {"limits": limits})


# ---- gunicorn, logging and process limits ---------------------------------------------------

class JsonGunicornLogger(glogging.Logger):
    """gunicorn's error and access logs as JSON lines through the root logger (sandgate.core.jsonlog)."""

    def setup(self, cfg) -> None:
        """Route gunicorn.error/gunicorn.access to the root JSON handler instead of gunicorn's own."""
        self.cfg = cfg
        self._access_log_enabled = cfg.accesslog is not None
        self.loglevel = self.LOG_LEVELS.get(cfg.loglevel.lower(), logging.INFO)
        for logger, level in ((self.error_log, self.loglevel), (self.access_log, logging.INFO)):
            logger.handlers[:] = []
            logger.propagate = True
            logger.setLevel(level)

    def access(self, resp, req, environ, request_time: timedelta) -> None:
        """One JSON line per HTTP request with the facts as fields."""
        if not self._access_log_enabled:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        self.access_log.info("request", extra={
            "method": environ.get("REQUEST_METHOD"), "path": environ.get("PATH_INFO"),
            "status": int(status) if str(status).isdigit() else status, "bytes": getattr(resp, "sent", None),
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "remote": environ.get("REMOTE_ADDR"), "user_agent": environ.get("HTTP_USER_AGENT"),
        })


class GunicornApp(BaseApplication):
    """gunicorn run programmatically: options from the command, the app built by `app_factory` in each worker."""

    def __init__(self, options: dict, app_factory: Callable[[], Any]):
        self.options = options
        self.app_factory = app_factory
        super().__init__()

    def load_config(self) -> None:
        """Apply the options this gunicorn version knows."""
        for key, value in self.options.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self):
        """Build the WSGI app (in the worker after fork, unless preload_app)."""
        return self.app_factory()


def settle_heap(worker=None) -> None:
    """Move everything alive once a worker has built its app out of the cyclic collector's sight.

    A worker holds tens of thousands of long-lived objects (Flask, the kubernetes client, the policy;
    the extender's cache, ~10^6 objects at 5,000 nodes). Every full collection walked all of them:
    30-180 ms measured under load in the webhook, a few times a minute at a few hundred requests/s,
    stalling every request in flight (bench/webhook.py p99, bench/extender.py). Frozen objects are
    never scanned again and their pages stay shared after fork; request garbage is collected as
    before. Usable as gunicorn's post_worker_init hook (it ignores the worker argument).
    """
    gc.collect()
    gc.freeze()


def bind_address(host: str, port: int) -> str:
    """gunicorn's bind string for `host`:`port` (IPv6 literals bracketed)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def gunicorn_options(host: str, port: int, *, workers: int, threads: int, tls: ReloadingContext | None,
                     limits: Limits = Limits(), proc_name: str, log_level: str = "info",
                     access_log: bool = False) -> dict[str, Any]:
    """The gunicorn settings shared by the webhook and the extender (and bench baselines)."""
    options: dict[str, Any] = {
        "bind": [bind_address(host, port)],
        "worker_class": worker_class(limits),
        "workers": workers,
        "threads": threads,
        "worker_connections": limits.max_connections,
        "keepalive": limits.keepalive,
        "logger_class": JsonGunicornLogger,
        "loglevel": log_level,
        "accesslog": "-" if access_log else None,
        "errorlog": "-",
        "graceful_timeout": 15,
        "proc_name": proc_name,
        # A control socket would be a second, unauthenticated management endpoint; we need none.
        "control_socket_disable": True,
    }
    if tls is not None:
        options.update(certfile=tls.cert_file, keyfile=tls.key_file,
                       # Called for every accepted connection: the current (possibly rotated) context.
                       ssl_context=lambda conf, default_factory: tls.context())
    return options


def raise_fd_limit(workers_connections: int) -> int:
    """Raise the soft open-files limit toward what `workers_connections` needs (never above the hard one).

    Returns the soft limit in force. Each worker process inherits it and needs a descriptor per
    connection; the common default soft limit (1024) would stop a worker at ~1,000 connections.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = workers_connections + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
    return soft


def add_arguments(parser) -> None:
    """The connection-deadline flags, the same on every serving command."""
    parser.add_argument("--tls-handshake-timeout", type=_seconds, default=HANDSHAKE_TIMEOUT, metavar="SECONDS",
                        help=f"close connections that have not finished the TLS handshake within this time "
                             f"(default {HANDSHAKE_TIMEOUT:g})")
    parser.add_argument("--request-timeout", type=_seconds, default=REQUEST_TIMEOUT, metavar="SECONDS",
                        help=f"deadline to receive a whole request (from the handshake's end or its first "
                             f"byte) and to send its answer (default {REQUEST_TIMEOUT:g})")
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS, metavar="N",
                        help=f"open connections per worker; beyond it the oldest unfinished one is closed "
                             f"(default {MAX_CONNECTIONS})")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.1 <= value <= 300:
        raise argparse.ArgumentTypeError(f"must be between 0.1 and 300 seconds, got {text}")
    return value
