"""Control records are taken out of a job's stdout exactly, across chunk boundaries, and leave the rest intact."""

from __future__ import annotations

import json

import pytest

from jupyter_launch import control
from jupyter_launch.control import MARK, RecordSplitter


def _split(data: bytes, size: int):
    s = RecordSplitter()
    plain, records = b"", []
    for i in range(0, len(data), size):
        p, r = s.feed(data[i:i + size])
        plain += p
        records += r
    return plain + s.flush(), records


@pytest.mark.parametrize("size", [1, 2, 7, 16, 64, 4096])
def test_records_split_out_at_any_chunk_size(size):
    rec = {"type": "metrics", "step": 1, "data": {"loss": 0.5}}
    data = b"before\n" + control.encode(rec).encode() + b"middle\n" + control.encode({"type": "progress", "value": 2}).encode() + b"after\n"
    plain, records = _split(data, size)
    assert plain == b"before\nmiddle\nafter\n"
    assert records == [rec, {"type": "progress", "value": 2}]


def test_not_json_after_the_mark_stays_in_the_log():
    data = MARK + b"not json\nok\n"
    plain, records = _split(data, 5)
    assert plain == data and records == []


def test_plain_text_with_record_separator_is_untouched():
    data = b"a\x1eb\nc\n"
    assert _split(data, 2) == (data, [])


def test_log_writes_a_record(capsys):
    control.log({"loss": 0.25, "acc": float("nan")}, step=3)
    out = capsys.readouterr().out
    assert out.startswith(control.MARK_STR)
    rec = json.loads(out[len(control.MARK_STR):])
    assert rec["type"] == "metrics" and rec["step"] == 3 and rec["data"] == {"loss": 0.25, "acc": "nan"}


def test_log_refuses_non_dict():
    with pytest.raises(TypeError, match="dict of metrics"):
        control.log([1, 2])  # type: ignore[arg-type]
