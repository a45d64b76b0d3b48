"""packager.bencode: the encoder torrents are made with and the bounded decoder that reads tracker replies and
.torrent files, each against libtorrent's, and the decoder against hostile input."""

from __future__ import annotations

import libtorrent as lt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from packager.bencode import BencodeError, bdecode, bdecode_dict, bencode

BOUNDS = {"max_depth": 16, "max_items": 20_000}

values = st.recursive(
    st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=30),  # libtorrent: 64-bit integers
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.binary(max_size=8), inner, max_size=5),
    max_leaves=30,
)


@given(values)
def test_our_bencoding_is_libtorrents(value):
    """Torrents are made without libtorrent (0.3 s to import cold); its encoder is the reference."""
    assert bencode(value) == lt.bencode(value)


@given(values)
def test_bdecode_reads_what_libtorrent_writes(value):
    assert bdecode(lt.bencode(value), max_depth=64, max_items=20_000) == value


@given(st.dictionaries(st.binary(max_size=8), values, max_size=5), values)
def test_bdecode_dict_gives_the_exact_bytes_of_one_value(top, inner):
    data = lt.bencode(top | {b"info": inner})
    decoded, raw = bdecode_dict(data, b"info", max_depth=64, max_items=20_000)
    assert decoded == top | {b"info": inner} and raw == lt.bencode(inner)
    assert bdecode_dict(lt.bencode(top), b"\xff" * 9, **BOUNDS)[1] is None  # keys are at most 8 bytes here


def test_bdecode_dict_keeps_the_bytes_as_they_are_not_re_encoded():
    # Keys out of order (not canonical): an info-hash is over these bytes, which a re-encoding would sort.
    info = b"d4:name1:x6:lengthi3ee"
    assert bdecode_dict(b"d4:info" + info + b"e", b"info", **BOUNDS) == (
        {b"info": {b"name": b"x", b"length": 3}},
        info,
    )
    with pytest.raises(BencodeError, match="not a bencoded dictionary"):
        bdecode_dict(b"li1ee", b"info", **BOUNDS)


@pytest.mark.parametrize(
    "data", [b"", b"i12", b"i1x2e", b"3:ab", b"d1:ae", b"di1ei2ee", b"i1ei2e", b"x", b"l" * 20 + b"e" * 20]
)
def test_bdecode_refuses_broken_input(data):
    with pytest.raises(BencodeError):
        bdecode(data, **BOUNDS)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"l" * 1_000_000 + b"e" * 1_000_000, "nested deeper than 16"),  # a million deep: refused at 17
        (b"d" * 1_000_000, "nested deeper than 16"),
        (b"l" + b"i1e" * 30_000 + b"e", "too many values"),
        (b"4000000000:abc", "a string of 4000000000 bytes at 0 runs past the end"),  # claims 4 GB
        (b"99999999999:x", "bad string length at 0"),  # 11 digits
        (b"i" + b"9" * 30 + b"e", "not closed within 21 characters"),
        (b"d1:ai1e1:ai2ee", "appears twice"),  # which one would a reader believe?
        (b"di1ei2ee", "is not a string"),
    ],
)
def test_bdecode_refuses_hostile_input_by_its_bound(data, why):
    with pytest.raises(BencodeError, match=why):
        bdecode(data, **BOUNDS)
