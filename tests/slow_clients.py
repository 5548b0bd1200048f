"""What the slow-client tests of the webhook and the extender both require of bench.slowconn.measure's result."""

from __future__ import annotations


def assert_answered_under_flood(result: dict, count: int) -> None:
    """Every ordinary request answered (fresh and keep-alive connections) while ~1,000 hostile ones were held."""
    assert result["hostile_open_at_start"] >= 950, result
    for mode in ("fresh", "keepalive"):
        got = result[mode]
        assert (got["sent"], got["answered"], got["failures"]) == (count, count, 0), got["first_failures"]
    # the deadlines closed (at least) every tcp and half-handshake connection once; the flood reopened them
    assert result["hostile_closed_by_server"] >= 500, result
