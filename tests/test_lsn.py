"""ram.lsn, the one LSN converter: PostgreSQL's spelling, both parse rule sets of the old copies."""

import pytest

from ram.lsn import MAX_LSN, format_lsn, parse_lsn


def test_round_trip_and_spelling() -> None:
    assert parse_lsn("0/0") == 0
    assert parse_lsn(" 16/b374d848 ") == 0x16B374D848
    assert format_lsn(0x16B374D848) == "16/B374D848"
    assert format_lsn(0x1_0000_00A0) == "1/A0"
    assert format_lsn(0x1_0000_00A0, fixed_width=True) == "1/000000A0"
    assert parse_lsn("1/000000A0") == parse_lsn("1/A0")
    assert format_lsn(parse_lsn("FFFFFFFF/FFFFFFFF")) == "FFFFFFFF/FFFFFFFF"
    assert parse_lsn("FFFFFFFF/FFFFFFFF") == MAX_LSN


@pytest.mark.parametrize("bad", ["", "0", "1", "1/", "/1", "x/1", "100000000/0", "123456789/0", "1/+1", "1_0/1"])
def test_rejects_what_postgresql_would_not_print(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_lsn(bad)


@pytest.mark.parametrize("bad", [-1, MAX_LSN + 1])
def test_format_refuses_out_of_range(bad: int) -> None:
    with pytest.raises(ValueError):
        format_lsn(bad)
