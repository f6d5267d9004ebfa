"""JSON files read a block at a time (selfevolve/formats_read.py picks the reader): a top-level array yields
its elements one by one, whatever the file's size; a document that starts with '{' is one record or a wrapper
of records (``{"data": [...]}``), parsed whole. A wrong element is rejected and reading resumes at the next
record; a file cut inside a record (ShareGPT V3 as shipped) yields every whole record before the cut.
"""
from __future__ import annotations

import codecs
import json
import math
import re
from typing import Any, BinaryIO, Iterator

from . import formats_items
from .formats_items import MAX_RAW, SURROGATE, TURN_KEYS, Decoder, ImportLimits, Item, error_msg

_SKIP: dict[str, re.Pattern] = {}
_NUMBER_TAIL = re.compile(r"[0-9.eE+-]*")


class Text:
    """A binary file as text decoded a block at a time; ``buf[pos:]`` is not consumed yet. Bytes that are not
    UTF-8 decode to lone surrogates U+DC80..U+DCFF ('surrogateescape'): valid UTF-8 never decodes to a
    surrogate, so one in a record's raw text marks exactly the records that held such bytes."""

    KEEP = 256  # characters kept before ``pos`` when the buffer is cut: the indentation of the current record

    def __init__(self, f: BinaryIO):
        self.f = f
        self.dec = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self.buf, self.pos, self.eof = "", 0, False

    def more(self, size: int = 0) -> bool:
        """Append the next block (``size`` bytes, at least ``BLOCK``); positions shift (keep offsets relative
        to ``pos`` across a call)."""
        if self.eof:
            return False
        data = self.f.read(max(size, formats_items.BLOCK))
        self.eof = not data
        keep = max(0, self.pos - self.KEEP)
        self.buf = self.buf[keep:] + self.dec.decode(data, final=self.eof)
        self.pos -= keep
        return True

    def skip(self, chars: str = " \t\r\n") -> str:
        """Consume ``chars``; the next character, '' at the end of the file."""
        pattern = _SKIP.get(chars) or _SKIP.setdefault(chars, re.compile(f"[{re.escape(chars)}]*"))
        while True:
            self.pos = pattern.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def value(self, dec: Decoder) -> tuple[Any, int]:
        """Decode the JSON value at ``pos``, reading on while the block ends inside it. Raises as json does for
        a value that is wrong, or cut by the end of the file (see :meth:`cut`)."""
        while True:
            try:
                value, end = dec.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                if self.eof or not self.cut(e, 16):
                    raise
            else:
                # only a number can parse whole and still go on ("12" of "123", "2" of "2.5")
                if self.eof or type(value) not in (int, float) or not _NUMBER_TAIL.fullmatch(self.buf, end):
                    return value, end
            self.more(len(self.buf) - self.pos)  # doubles: a long record is not re-parsed block by block

    def cut(self, e: json.JSONDecodeError, slack: int) -> bool:
        """Whether the error may be the text running out rather than a wrong character: an open string, or an
        error within ``slack`` characters of the end (a cut literal, number or escape fails a few before it)."""
        return e.msg.startswith("Unterminated string") or e.pos >= len(self.buf.rstrip()) - slack

    def resync(self, err: int) -> int:
        """Where the next record may start after a syntax error at ``err``: the next line indented like this
        record's first line (pretty-printed files), else the next ``,`` + object or list."""
        line = self.buf.rfind("\n", 0, self.pos) + 1
        indent = self.buf[line:self.pos]
        pattern = (re.compile(r"\n" + re.escape(indent) + r"(?=[\[{])") if line and not indent.strip()
                   else re.compile(r",\s*(?=[\[{])"))
        rel = max(err, self.pos + 1) - self.pos
        while not (m := pattern.search(self.buf, self.pos + rel)) and self.more():
            pass
        return m.end() if m else len(self.buf)


def read_array(text: Text, name: str, limits: ImportLimits) -> Iterator[Item]:
    """The elements of a JSON array, one at a time; a wrong element is skipped to the next record start."""
    dec, i = Decoder(), 0
    while True:
        first = text.skip(" \t\r\n,")
        if first == "]":
            text.pos += 1
            if text.skip():
                yield Item(f"{name}#{i}", text.buf[text.pos:text.pos + MAX_RAW],
                           "invalid_json: text after the closing ']'")
            return
        if not first:  # the file ends between records: nothing was cut
            return
        src = f"{name}#{i}"
        i += 1
        try:
            value, end = text.value(dec)
        except (ValueError, RecursionError) as e:
            # at the end of the file: tight slack, so a wrong character a few records before the end still resyncs
            if text.eof and isinstance(e, json.JSONDecodeError) and text.cut(e, 6):
                yield Item(src, text.buf[text.pos:text.pos + MAX_RAW],
                           f"invalid_json: the file ends inside this record ({e.msg})")
                return
            end = text.resync(e.pos if isinstance(e, json.JSONDecodeError) else text.pos)
            yield Item(src, text.buf[text.pos:min(end, text.pos + MAX_RAW)], f"invalid_json: {error_msg(e)}")
            text.pos = end
            continue
        yield _element(src, value, text.buf, text.pos, end, dec.bad, limits)
        text.pos = end


def _element(src: str, value: Any, buf: str, start: int, end: int, bad: str | None, limits: ImportLimits) -> Item:
    """The item of one array element: the value, or a reason from its raw text."""
    cap = limits.max_record_bytes
    size = end - start if end - start <= cap // 4 else len(buf[start:end].encode("utf-8", "surrogateescape"))
    raw = None
    if size > cap:
        reason = f"record_too_large: {size:,} bytes (max {cap:,})"
    elif m := SURROGATE.search(buf, start, end):
        reason = f"invalid_utf8: byte 0x{ord(m.group()) - 0xDC00:02x} at character {m.start() - start}"
        raw = buf[start:min(end, start + MAX_RAW)].encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    elif bad:
        reason = f"invalid_json: {bad}"
    else:
        return Item(src, value)
    return Item(src, raw if raw is not None else buf[start:min(end, start + MAX_RAW)], reason)


def read_document(text: Text, name: str) -> list[Item] | None:
    """A file that starts with '{': one record, or a wrapper of records. None when it is not one JSON value
    (JSON Lines under a .json name)."""
    dec = Decoder()
    try:
        value, text.pos = text.value(dec)
    except (ValueError, RecursionError):
        return None
    if text.skip():
        return None
    found = _unwrap(value)
    if found is None:
        found = [value]
    return [Item(f"{name}#{i}", r, f"invalid_json: {dec.bad}" if dec.bad and _nonfinite(r) else None)
            for i, r in enumerate(found)]


def _nonfinite(value: Any) -> bool:
    """Whether a NaN / Infinity sits anywhere in ``value`` (a loop: parsed JSON may nest deeper than the stack)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return True
        stack.extend(v.values() if isinstance(v, dict) else v if isinstance(v, list) else ())
    return False


def _unwrap(value: Any) -> list | None:
    """The records of a JSON document, or None when the document is itself one record."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        if isinstance(value.get("data"), list):
            return value["data"]
        convs = value.get("conversations")
        # a wrapper holds records; a ShareGPT record holds turns, which never carry these keys
        if isinstance(convs, list) and convs and isinstance(convs[0], dict) and any(k in convs[0] for k in TURN_KEYS):
            return convs
    return None
