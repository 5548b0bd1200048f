"""A small keep-alive JSON-over-HTTP(S) client, standing in for the API server's and scheduler's clients.

One persistent connection per component, as kube-apiserver and kube-scheduler keep theirs; TLS
is verified against the demo's generated CA (the webhook's certificate carries the 127.0.0.1 SAN).
"""

from __future__ import annotations

import gzip
import http.client
import json
import ssl
from typing import Any
from urllib.parse import urlsplit


class RequestFailed(RuntimeError):
    """A request failed: connection error, non-2xx status or a body that is not JSON."""


class JsonClient:
    """POST JSON / GET against one base URL over a reused connection."""

    def __init__(self, base_url: str, cafile: str | None = None, timeout: float = 10.0,
                 headers: dict[str, str] | None = None):
        parts = urlsplit(base_url)
        self.base_url = base_url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port
        self._timeout = timeout
        self._headers = dict(headers or {})
        self._context = None
        if self._https:
            self._context = ssl.create_default_context(cafile=cafile)
            self._context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout,
                                                         context=self._context)
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        return self._conn

    def close(self) -> None:
        """Close the connection (a later request opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _send(self, method: str, path: str, payload: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        conn = self._connection()
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        data = response.read()
        if response.getheader("Content-Encoding") == "gzip":
            data = gzip.decompress(data)
        return response.status, data

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """Send one request and return (status, body); RequestFailed when no answer arrives."""
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = dict(self._headers)
        if payload is not None:
            headers["Content-Type"] = "application/json"
        reused = self._conn is not None
        try:
            try:
                return self._send(method, path, payload, headers)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if not reused:
                    raise
                # The server closed an idle keep-alive connection: one retry on a fresh one.
                return self._send(method, path, payload, headers)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise RequestFailed(f"{method} {self.base_url}{path}: {exc}") from exc

    def post(self, path: str, body: Any) -> Any:
        """POST `body` as JSON and decode the JSON answer; RequestFailed on a non-200 status."""
        status, data = self.request("POST", path, body)
        if status != 200:
            raise RequestFailed(f"POST {self.base_url}{path}: HTTP {status}: {data[:300].decode(errors='replace')}")
        try:
            return json.loads(data)
        except ValueError as exc:
            raise RequestFailed(f"POST {self.base_url}{path}: answer is not JSON: {exc}") from exc
