"""What a serving certificate says about itself: its expiry, for the expiry metric and renewal."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

# Metric name shared by the webhook and the extender (a contract: docs/install.md alerts on it).
EXPIRY_METRIC = "sandgate_certificate_expiry_timestamp_seconds"
EXPIRY_HELP = "notAfter of the serving certificate in use, as a Unix timestamp (alert well before it)."


def not_after(cert_pem: bytes) -> float:
    """notAfter of the first certificate in `cert_pem`, as Unix seconds; ValueError if it is not PEM."""
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc.timestamp()


def file_not_after(path: str | Path) -> float | None:
    """notAfter of the certificate file, or None when it cannot be read or parsed."""
    try:
        return not_after(Path(path).read_bytes())
    except (OSError, ValueError):
        return None
