"""Masking a job's declared secrets as ``***`` in its log and metrics before they are stored, as CI systems do.

What is masked, for each secret value: the value itself, each of its lines (a multi-line secret: a key file), and its
base64 form, also where it sits at any offset inside a longer base64 text (``user:secret`` in a Basic header).
Values shorter than :data:`MIN_LENGTH` are not masked: ``***`` in place of every ``1`` or ``ab`` would ruin the log
and hide nothing. A stream's masker keeps back the end of each chunk that could be the start of a secret, so a value
split across two chunks is still caught; that tail comes out with the next chunk, or at :meth:`StreamMasker.flush`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Any

MASK = "***"
MIN_LENGTH = 4


def _base64_forms(value: bytes) -> list[bytes]:
    """The base64 text of ``value`` on its own (padding included), and the part of it that is the same whatever
    precedes or follows it in a longer text: for each of the three offsets it can start at."""
    forms = [base64.b64encode(value)]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + value)
        first = -(-8 * shift // 6)  # the first character with no bit of what precedes
        last = (8 * (shift + len(value))) // 6  # characters before this one have no bit of what follows
        forms.append(encoded[first:last])
    return forms


def patterns(secrets: Iterable[str]) -> list[bytes]:
    """Every byte string to mask for ``secrets``, longest first; none shorter than :data:`MIN_LENGTH`."""
    found: set[bytes] = set()
    for secret in secrets:
        raw = secret.encode()
        pieces = {raw, *(line.rstrip(b"\r") for line in raw.split(b"\n"))}
        for piece in list(pieces):
            if len(piece) >= MIN_LENGTH:
                pieces.update(_base64_forms(piece))
        found.update(p for p in pieces if len(p) >= MIN_LENGTH)
    return sorted(found, key=lambda p: (-len(p), p))


class Masker:
    """The secrets of one job, compiled once; :meth:`stream` gives a masker for each of its streams."""

    def __init__(self, secrets: Iterable[str]):
        self.patterns = patterns(secrets)
        self._regex = re.compile(b"|".join(re.escape(p) for p in self.patterns)) if self.patterns else None
        self._text = re.compile("|".join(re.escape(p.decode()) for p in self.patterns)) if self.patterns else None
        self._longest = max((len(p) for p in self.patterns), default=0)
        # Enough to tell whether a chunk holds any pattern: those that contain no other (a line of a multi-line
        # value, the stable middle of a base64 form) are found wherever a longer one is.
        self._probes = [p for p in self.patterns if not any(q != p and q in p for q in self.patterns)]

    def __bool__(self) -> bool:
        return self._regex is not None

    def mask(self, data: bytes) -> bytes:
        # A search per probe (memchr-fast) first: the regex alternation tries every pattern at every byte.
        if self._regex is None or not any(p in data for p in self._probes):
            return data
        return self._regex.sub(MASK.encode(), data)

    def held(self, data: bytes) -> int:
        """How many bytes at the end of ``data`` (already masked) could begin a secret: they wait for the next chunk."""
        start = len(data)  # where the longest such tail starts
        for pattern in self.patterns:
            first = pattern[:1]
            at = data.find(first, max(0, len(data) - len(pattern) + 1))
            while 0 <= at < start:
                if pattern.startswith(data[at:]):
                    start = at
                    break
                at = data.find(first, at + 1)
        return len(data) - start

    def mask_value(self, value: Any) -> Any:
        """``value`` (a control record: metrics, progress, the result) with every string in it masked, keys too."""
        if self._text is None:
            return value
        if isinstance(value, str):
            return self._text.sub(MASK, value)
        if isinstance(value, dict):
            return {self.mask_value(k): self.mask_value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.mask_value(v) for v in value]
        return value

    def stream(self) -> StreamMasker:
        return StreamMasker(self)


class StreamMasker:
    """Masks one stream's chunks in order, keeping back a tail that could be the start of a secret."""

    def __init__(self, masker: Masker):
        self.masker = masker
        self._tail = b""

    def feed(self, data: bytes) -> bytes:
        if self._tail:
            data, self._tail = self._tail + data, b""
        data = self.masker.mask(data)
        keep = self.masker.held(data)
        if keep:
            data, self._tail = data[:-keep], data[-keep:]
        return data

    def flush(self) -> bytes:
        """What is kept back, at the stream's end (the start of a secret that never came whole)."""
        data, self._tail = self._tail, b""
        return data
