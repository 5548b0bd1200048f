"""The one quantity parser (sandgate.core.quantity): Kubernetes' grammar, bounded magnitude, field-named errors."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, strategies as st

from sandgate.core.quantity import MAX_MAGNITUDE, QuantityError, millis, parse_field, units


@pytest.mark.parametrize("text, value", [
    ("100m", Decimal("0.1")), ("64Mi", Decimal(64 * 2 ** 20)), ("1", 1), ("0", 0), ("1.5", Decimal("1.5")),
    ("1.", 1), (".5", Decimal("0.5")), ("+1k", 1000), ("-2", -2), ("1e3", 1000), ("1E3", 1000), ("1e+3", 1000),
    ("2E-3", Decimal("0.002")), ("1Ki", 1024), ("3n", Decimal("3e-9")), ("7u", Decimal("7e-6")), ("1P", 10 ** 15),
    ("0000000000000000000000000000000000000001", 1), ("0e999999999", 0),
    # like the API server: finer than a nano-unit rounds away from zero
    ("0.9n", Decimal("1e-9")), ("1e-999990", Decimal("1e-9")), ("1.0000000001", Decimal("1.000000001")),
    (str(MAX_MAGNITUDE), MAX_MAGNITUDE),
])
def test_kubernetes_grammar_is_accepted(text, value):
    assert parse_field(text, "f") == value


@pytest.mark.parametrize("text", ["", ".", "+", "-", "1e", "1ki", "1Mb", "NaN", "nan", "Infinity", "-Infinity",
                                  "inf", "1 ", " 1", "1.2.3", "0x10", "1_000", "١", "1e1.5", "1Ki1"])
def test_what_is_not_a_quantity_is_refused_naming_the_field(text):
    with pytest.raises(QuantityError) as info:
        parse_field(text, "spec.containers[0].resources.requests.cpu")
    assert str(info.value).startswith("spec.containers[0].resources.requests.cpu: invalid quantity ")
    assert info.value.path == "spec.containers[0].resources.requests.cpu"


@pytest.mark.parametrize("text", ["1e999990", "1E", "8Ei", "9223372036854776", "10000P",
                                  "1e16", "9300000000000000000m", "-1e17", 10 ** 20])
def test_magnitudes_beyond_int64_millis_are_out_of_range(text):
    with pytest.raises(QuantityError, match=r"out of range \(magnitude above 9223372036854775\)"):
        parse_field(text, "f")


def test_absurd_texts_are_refused_before_any_conversion():
    with pytest.raises(QuantityError, match="longer than 64 characters"):
        parse_field("1" * 100_000, "f")
    with pytest.raises(QuantityError, match="exponent out of range"):
        parse_field("1e" + "9" * 40, "f")
    with pytest.raises(QuantityError, match="longer than 64 characters"):
        parse_field("0." + "0" * 100 + "1", "f")


def test_numbers_from_yaml_and_json():
    assert parse_field(2, "f") == 2 and parse_field(0.5, "f") == Decimal("0.5")
    for bad in (float("nan"), float("inf"), True, None, ["1"], {"a": 1}):
        with pytest.raises(QuantityError, match='^f: invalid quantity "'):
            parse_field(bad, "f")


def test_millis_and_units_round_up_like_the_scheduler():
    assert millis("100m", "f") == 100 and millis("0.1001", "f") == 101 and millis("1n", "f") == 1
    assert units("64Mi", "f") == 64 * 2 ** 20 and units("0.5", "f") == 1 and units("-0.5", "f") == 0
    assert millis(str(MAX_MAGNITUDE), "f") <= 2 ** 63 - 1


@given(st.from_regex(r"\A[+-]?([0-9]{1,20}(\.[0-9]{0,12})?|\.[0-9]{1,12})(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]{1,3})?\Z"))
def test_every_grammatical_text_parses_or_is_out_of_range(text):
    try:
        value = parse_field(text, "f")
    except QuantityError as exc:
        assert "out of range" in exc.reason
    else:
        assert abs(value) <= MAX_MAGNITUDE
