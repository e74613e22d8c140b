"""core/parse: the one reader of values from outside. Tables of what each reader takes and
refuses, and properties over arbitrary input: a reader never raises, and what it takes is
exactly what its field holds."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k3net.convert import format_time, format_time_precise, parse_time
from k3net.core import parse

NOW = dt.datetime(2026, 12, 2, 18, 0, tzinfo=dt.UTC)
BOUNDED = settings(max_examples=200, deadline=None)

anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=8,
)


@pytest.mark.parametrize(("value", "expected"), [
    ("7946", 7946), ("1", 1), ("65535", 65535), ("07946", 7946), (7946, 7946),
    ("²", None), ("٣", None), ("１２", None), ("0", None), ("65536", None), ("-1", None),
    (" 80", None), ("80 ", None), ("+80", None), ("8_0", None), ("", None), ("0x50", None),
    (True, None), (80.0, None), (None, None), (["80"], None), ("9" * 40, None),
])
def test_port(value: object, expected: int | None) -> None:
    got = parse.port(value)
    if expected is None:
        assert isinstance(got, parse.Foreign), got
        assert got.field == "port"
    else:
        assert got == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("4242", 4242), ("1", 1), (str(2**31 - 1), 2**31 - 1), (31337, 31337),
    ("0", None), (str(2**31), None), ("²", None), ("42\n", None), (False, None), (-5, None),
])
def test_pid(value: object, expected: int | None) -> None:
    got = parse.pid(value)
    assert got == expected if expected is not None else isinstance(got, parse.Foreign)


@pytest.mark.parametrize(("value", "expected"), [
    ("0", 0), ("123456789", 123456789), (str(2**63 - 1), 2**63 - 1),
    (str(2**63), None), ("²", None), ("", None), (None, None), ("-3", None),
])
def test_revision(value: object, expected: int | None) -> None:
    got = parse.revision(value)
    assert got == expected if expected is not None else isinstance(got, parse.Foreign)


UTC = dt.UTC


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-29T10:21:14Z", dt.datetime(2026, 11, 29, 10, 21, 14, tzinfo=UTC)),
    ("2026-11-29t10:21:14z", dt.datetime(2026, 11, 29, 10, 21, 14, tzinfo=UTC)),
    ("2026-11-29T10:21:14.5Z", dt.datetime(2026, 11, 29, 10, 21, 14, 500000, tzinfo=UTC)),
    # Go's RFC3339Nano: nine digits, cut to microseconds.
    ("2026-11-29T10:21:14.123456789Z", dt.datetime(2026, 11, 29, 10, 21, 14, 123456, tzinfo=UTC)),
    ("2026-11-29T11:21:14+01:00", dt.datetime(2026, 11, 29, 10, 21, 14, tzinfo=UTC)),
    ("2026-11-29T05:51:14-04:30", dt.datetime(2026, 11, 29, 10, 21, 14, tzinfo=UTC)),
    ("2016-12-31T23:59:60Z", dt.datetime(2017, 1, 1, tzinfo=UTC)),  # a leap second
    ("1970-01-01T00:00:00Z", dt.datetime(1970, 1, 1, tzinfo=UTC)),  # the form is right
])
def test_timestamp_reads_rfc3339(text: str, expected: dt.datetime) -> None:
    assert parse.timestamp(text) == expected


@pytest.mark.parametrize("text", [
    "2026-11-29", "2026-11-29T10:21:14", "2026-11-29 10:21:14Z", "2026-W48-1T10:21:14Z",
    "20261129T102114Z", "2026-11-29T10:21Z", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z",
    "2026-11-29T24:00:00Z", "2026-11-29T10:21:14.Z", "2026-11-29T10:21:14.1234567890Z",
    "2026-11-29T10:21:14+24:00", "２０２６-11-29T10:21:14Z", "0000-01-01T00:00:00Z",
    "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:60Z", "2026-11-29T10:21:14Z ", "", "yesterday",
])
def test_timestamp_refuses_anything_else(text: str) -> None:
    assert isinstance(parse.timestamp(text), parse.Foreign)
    with pytest.raises(ValueError):
        parse_time(text)


@pytest.mark.parametrize(("text", "taken"), [
    ("2026-12-02T17:00:00Z", True),
    ("2000-01-01T00:00:00Z", True),
    ("2026-12-03T17:59:59Z", True),  # within a day ahead: clock drift, a zone mix-up
    ("1999-12-31T23:59:59Z", False),  # a host whose clock was not set
    ("1970-01-01T00:00:00Z", False),
    ("2026-12-03T18:00:01Z", False),  # more than a day ahead
    ("9999-12-31T23:59:59Z", False),
])
def test_rfc3339_wants_a_sane_range(text: str, taken: bool) -> None:
    assert isinstance(parse.rfc3339(text, NOW), dt.datetime) is taken


@pytest.mark.parametrize(("text", "taken"), [
    ("10.0.0.1", True), ("2001:db8::1", True), ("::1", True), ("::ffff:10.0.0.1", True),
    ("10.0.0.300", False), ("10.0.0", False), ("fe80::1%eth0", False), ("010.0.0.1", False),
    ("host.local", False), (" 10.0.0.1", False), ("１0.0.0.1", False), ("", False),
])
def test_address(text: str, taken: bool) -> None:
    assert isinstance(parse.address(text), ipaddress.IPv4Address | ipaddress.IPv6Address) \
        is taken


def test_text_is_bounded() -> None:
    assert parse.text("abc", 3) == "abc"
    assert isinstance(parse.text("abcd", 3), parse.Foreign)
    assert isinstance(parse.text(3, 3), parse.Foreign)


def test_a_foreign_value_is_counted_each_time_and_logged_once_per_source_and_field(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tally = parse.Tally()
    foreign = parse.Foreign("k3.network/port", "'²'", "not ASCII digits")
    with caplog.at_level(logging.WARNING, logger="k3net.foreign"):
        assert tally.note("Node x", foreign) is True
        assert tally.note("Node x", foreign) is False
        assert tally.note("Node y", foreign) is True
        assert tally.note("Node x", parse.Foreign("k3.network/pid", "'²'", "x")) is True
    assert tally.counts == {"k3.network/port": 3, "k3.network/pid": 1}
    assert [r.getMessage() for r in caplog.records] == [
        "Node x: foreign k3.network/port '²' (not ASCII digits): skipped, left as it is",
        "Node y: foreign k3.network/port '²' (not ASCII digits): skipped, left as it is",
        "Node x: foreign k3.network/pid '²' (x): skipped, left as it is",
    ]


def test_the_logged_set_is_bounded() -> None:
    tally = parse.Tally()
    foreign = parse.Foreign("port", "'x'", "no")
    for i in range(parse.MAX_LOGGED + 10):
        tally.note(f"Node n{i}", foreign)
    assert len(tally.logged) == parse.MAX_LOGGED
    assert tally.counts == {"port": parse.MAX_LOGGED + 10}


def test_a_reader_given_where_notes_into_the_process_tally() -> None:
    before = parse.FOREIGN.counts.get("test-field", 0)
    parse.port("²", field="test-field", where="Node t")
    parse.port("80", field="test-field", where="Node t")
    assert parse.FOREIGN.counts["test-field"] == before + 1


# --- properties ---------------------------------------------------------------------------


@BOUNDED
@given(anything)
def test_no_reader_raises(value: object) -> None:
    for result in (parse.port(value), parse.pid(value), parse.revision(value),
                   parse.timestamp(value), parse.rfc3339(value, NOW), parse.address(value),
                   parse.text(value, 8), parse.number(value, 0, 10)):
        assert result is not None
        if isinstance(result, parse.Foreign):
            assert len(result.shown) <= parse.SHOWN


@BOUNDED
@given(st.text(max_size=12))
def test_a_number_taken_from_text_is_written_the_same_way(text: str) -> None:
    got = parse.number(text, 0, 10**12)
    if isinstance(got, int):
        assert text.isascii() and text.isdigit()
        assert int(text) == got
    else:
        assert not (text.isascii() and text.isdigit()) or int(text) > 10**12


@BOUNDED
@given(st.integers(min_value=-10, max_value=70000))
def test_a_port_round_trips(number: int) -> None:
    got = parse.port(str(number))
    assert got == number if 0 < number < 65536 else isinstance(got, parse.Foreign)


@BOUNDED
# (From year 1000: strftime writes the years before with fewer than four digits.)
@given(st.datetimes(min_value=dt.datetime(1000, 1, 2), max_value=dt.datetime(9999, 12, 30),
                    timezones=st.just(dt.UTC)))
def test_what_k3net_writes_it_reads(moment: dt.datetime) -> None:
    assert parse.timestamp(format_time_precise(moment)) == moment
    assert parse.timestamp(format_time(moment)) == moment.replace(microsecond=0)


@BOUNDED
@given(st.ip_addresses())
def test_every_address_is_read(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    assert parse.address(str(ip)) == ip
