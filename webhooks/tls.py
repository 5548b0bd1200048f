"""The serving TLS context: TLS 1.2+ only, reloaded when the certificate or key files change.

gunicorn asks its `ssl_context` server hook for a context each time it wraps an accepted socket
(gunicorn.sock.ssl_wrap_socket, called from the gthread worker's TConn.init), so returning a
context that is rebuilt when the files change gives every NEW connection the rotated certificate
without a restart, while established connections keep the one they negotiated. A Secret volume
update swaps a symlink, so files are compared by the stat of their resolved target.
"""

from __future__ import annotations

import ssl

from sandgate.core.reloading import ReloadingFiles

# Connections arrive far more often than certificates rotate; stat the files at most this often.
CHECK_INTERVAL = 1.0


class CertificateError(RuntimeError):
    """The certificate/key pair cannot be loaded (missing, unreadable, not PEM, or not a pair)."""


def build_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context for `cert_file`/`key_file` that refuses anything older than TLS 1.2."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # TLS 1.0/1.1 have known weaknesses (BEAST, SHA-1 handshake MACs); every supported API server
    # (Go >= 1.12 clients) speaks 1.2 and 1.3.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    # Forward-secret AEAD suites only for TLS 1.2 (TLS 1.3 suites are all AEAD already).
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    # HTTP/1.1 only: the gthread keep-alive handling is what the tests prove.
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

    A half-finished rotation (new certificate, old key) fails to load; the previous context keeps
    serving and the load is retried on the next check, so rotation never causes an outage.
    """

    def __init__(self, cert_file: str, key_file: str, check_interval: float = CHECK_INTERVAL):
        self.cert_file = cert_file
        self.key_file = key_file
        super().__init__("certificate", [cert_file, key_file], lambda: build_context(cert_file, key_file),
                         (CertificateError,), check_interval)

    def context(self) -> ssl.SSLContext:
        """The context for a new connection (reloaded first if the files changed)."""
        return self.current
