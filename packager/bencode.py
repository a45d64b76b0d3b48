"""BEP 3 bencoding, both ways, in one place: the encoder torrents are made with, and the bounded decoder that
reads tracker replies and .torrent files.

Every input decoded here may be hostile (a tracker's reply, a downloaded .torrent), so the decoder refuses,
with a BencodeError naming the offset: nesting deeper than its caller's bound (a structure nested a million
deep costs one step per level until the bound), more values in all than its caller's bound, an integer of
over 20 digits, a string length of over 10 digits or running past the end (a length claiming billions is
refused before anything is allocated for it), a dictionary key that is not a string or appears twice, and
bytes after the value. Neither side needs libtorrent (25 MB, 0.3 s to import from a cold cache).
"""

from __future__ import annotations

_I, _L, _D, _E = b"ilde"
_DIGITS = range(ord("0"), ord("9") + 1)


class BencodeError(ValueError):
    pass


def bencode(value: object) -> bytes:
    """BEP 3 bencoding of ints, bytes, lists and dicts with bytes keys; the same bytes as lt.bencode."""
    out: list[bytes] = []
    _bencode(value, out)
    return b"".join(out)


def _bencode(value: object, out: list[bytes]) -> None:
    if type(value) is bytes:
        out += (b"%d:" % len(value), value)
    elif type(value) is int:
        out.append(b"i%de" % value)
    elif type(value) is list:
        out.append(b"l")
        for item in value:
            _bencode(item, out)
        out.append(b"e")
    elif type(value) is dict:
        out.append(b"d")
        for key in sorted(value):  # BEP 3: keys are raw strings, sorted as raw strings
            if type(key) is not bytes:
                raise TypeError(f"a bencoded dict key must be bytes, not {type(key).__name__}")
            _bencode(key, out)
            _bencode(value[key], out)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes, *, max_depth: int, max_items: int) -> object:
    """Decode bencode into bytes / int / list / dict (bytes keys), within the bounds given (see the module
    docstring for what else is refused)."""
    decoder = _Decoder(data, max_depth, max_items)
    value = decoder.value(0)
    decoder.at_end()
    return value


def bdecode_dict(data: bytes, key: bytes, *, max_depth: int, max_items: int) -> tuple[dict, bytes | None]:
    """A bencoded dictionary, and the exact bytes its value under `key` was decoded from (None if absent):
    a .torrent's info-hash is the SHA-1 or SHA-256 of its info dict's bytes as they are in the file, which
    re-encoding the decoded value would not reproduce for a file that is not in canonical form."""
    decoder = _Decoder(data, max_depth, max_items)
    if not data or data[0] != _D:
        raise BencodeError("not a bencoded dictionary")
    top = decoder.value(0, watch=key)
    decoder.at_end()
    return top, decoder.watched


class _Decoder:
    def __init__(self, data: bytes, max_depth: int, max_items: int):
        self.data, self.pos, self.max_depth, self.items_left = data, 0, max_depth, max_items
        self.watched: bytes | None = None

    def at_end(self) -> None:
        if self.pos != len(self.data):
            raise BencodeError(f"{len(self.data) - self.pos} bytes after the value")

    def value(self, depth: int, watch: bytes | None = None) -> object:
        if depth > self.max_depth:
            raise BencodeError(f"nested deeper than {self.max_depth}")
        self.items_left -= 1
        if self.items_left < 0:
            raise BencodeError("too many values")
        lead = self._peek()
        if lead == _I:
            return self._int()
        if lead == _L:
            self.pos += 1
            items = []
            while self._peek() != _E:
                items.append(self.value(depth + 1))
            self.pos += 1
            return items
        if lead == _D:
            return self._dict(depth, watch)
        if lead in _DIGITS:
            return self._bytes()
        raise BencodeError(f"unexpected byte {lead:#04x} at {self.pos}")

    def _dict(self, depth: int, watch: bytes | None) -> dict[bytes, object]:
        self.pos += 1
        out: dict[bytes, object] = {}
        while self._peek() != _E:
            at = self.pos
            key = self.value(depth + 1)
            if not isinstance(key, bytes):
                raise BencodeError(f"a dictionary key at {at} is not a string")
            if key in out:
                raise BencodeError(f"the dictionary key {key[:40]!r} at {at} appears twice")
            start = self.pos
            out[key] = self.value(depth + 1)
            if key == watch:
                self.watched = self.data[start : self.pos]
        self.pos += 1
        return out

    def _peek(self) -> int:
        if self.pos >= len(self.data):
            raise BencodeError("cut short")
        return self.data[self.pos]

    def _int(self) -> int:
        end = self.data.find(b"e", self.pos + 1, self.pos + 23)
        if end < 0:
            raise BencodeError(f"integer at {self.pos} is not closed within 21 characters")
        text = self.data[self.pos + 1 : end]
        digits = text[1:] if text.startswith(b"-") else text
        if not digits.isdigit():
            raise BencodeError(f"not an integer at {self.pos}")
        self.pos = end + 1
        return int(text)

    def _bytes(self) -> bytes:
        colon = self.data.find(b":", self.pos, self.pos + 11)
        if colon < 0 or not self.data[self.pos : colon].isdigit():
            raise BencodeError(f"bad string length at {self.pos}")
        length = int(self.data[self.pos : colon])
        start = colon + 1
        if start + length > len(self.data):
            raise BencodeError(f"a string of {length} bytes at {self.pos} runs past the end")
        self.pos = start + length
        return self.data[start : self.pos]
