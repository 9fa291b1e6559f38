"""recis.ops.parse_criteo_lines and parse_hex_column: the C++ fast paths of the Criteo text
and Parquet readers, against their references and against the RecordParser that parses
everything they leave."""

import random

import pytest
import torch

from recis.io.criteo import RecordParser
from recis.ops import parse_criteo_lines, parse_hex_column, reference

SIZES = [1 + 97 * i for i in range(26)]


def plain_fields(rng):
    label = rng.choice("01")
    dense = [
        "" if rng.random() < 0.2 else str(rng.randint(-5, 10 ** rng.randint(1, 18) - 1))
        for _ in range(13)
    ]
    hexes = [
        "" if rng.random() < 0.15 else f"{rng.getrandbits(4 * rng.randint(1, 16)):x}"
        for _ in range(26)
    ]
    if rng.random() < 0.3:
        hexes = [h.upper() for h in hexes]
    return [label, *dense, *hexes]


# Lines the C++ parser must leave to Python (RecordParser may still accept them).
QUIRKS = [
    lambda f: f.__setitem__(0, "1.0"),
    lambda f: f.__setitem__(0, " 1"),
    lambda f: f.__setitem__(0, "2"),
    lambda f: f.__setitem__(0, ""),
    lambda f: f.__setitem__(3, "1e3"),
    lambda f: f.__setitem__(3, "-"),
    lambda f: f.__setitem__(3, "1" * 19),
    lambda f: f.__setitem__(20, "f" * 17),
    lambda f: f.__setitem__(20, "0x1f"),
    lambda f: f.__setitem__(20, "1f "),
    lambda f: f.__setitem__(20, "zz"),
    lambda f: f.__setitem__(20, "é"),
    lambda f: f.pop(),
    lambda f: f.append("1"),
]


def random_text(rng, n, delimiter):
    lines = []
    for _ in range(n):
        r = rng.random()
        if r < 0.05:
            lines.append(rng.choice(["", "  ", "\t\t", " \r", delimiter * 39]))
            continue
        fields = plain_fields(rng)
        if r < 0.15:
            rng.choice(QUIRKS)(fields)
        lines.append(delimiter.join(fields) + ("\r" if rng.random() < 0.1 else ""))
    text = "\n".join(lines)
    if rng.random() < 0.7:
        text += "\n"
    return text.encode()


def as_tensor(data):
    return (
        torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if data
        else torch.empty(0, dtype=torch.uint8)
    )


def parse_all(fn, data, delimiter, missing_id, first_line=0, phases=(1, 0, 1)):
    """Every block fn parses in data, resuming after each line it leaves (as the reader
    does); returns those blocks and the offsets of the lines left."""
    blocks, left, pos = [], [], 0
    line = first_line
    while pos < len(data):
        out = fn(
            as_tensor(data[pos:]), delimiter, SIZES, missing_id, first_line=line, phases=phases
        )
        blocks.append((pos, out))
        pos += int(out[4][0])
        line += int(out[4][1])
        if pos < len(data):
            left.append(pos)
            nl = data.find(b"\n", pos)
            pos = len(data) if nl < 0 else nl + 1
            line += 1
    return blocks, left


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("delimiter", ["\t", ","])
@pytest.mark.parametrize(
    ("first_line", "phases"),
    [(0, (1, 0, 1)), (5, (3, 1, 2)), (2, (7, 0, 4)), (1, (4, 2, 2))],
    ids=["every-line", "one-phase-of-3", "four-of-7", "no-phase"],
)
def test_matches_the_reference_on_random_lines(seed, delimiter, first_line, phases):
    rng = random.Random(seed)
    data = random_text(rng, rng.choice([1, 7, 300]), delimiter)
    missing_id = rng.choice([-1, 0])
    got, got_left = parse_all(parse_criteo_lines, data, delimiter, missing_id, first_line, phases)
    want, want_left = parse_all(
        reference.parse_criteo_lines, data, delimiter, missing_id, first_line, phases
    )
    assert got_left == want_left
    assert len(got) == len(want)
    for (_, g), (_, w) in zip(got, want, strict=True):
        for a, b in zip(g, w, strict=True):
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert len(g.labels) == len(g.ends) == len(g.dense) == len(g.ids)


@pytest.mark.parametrize("seed", range(3))
def test_parsed_lines_are_what_record_parser_gives(seed):
    rng = random.Random(100 + seed)
    data = random_text(rng, 300, "\t")
    parser = RecordParser(SIZES, missing_id=None)
    blocks, _ = parse_all(parse_criteo_lines, data, "\t", parser.missing)
    checked = 0
    for pos, out in blocks:
        starts = [pos, *(pos + int(e) for e in out.ends[:-1, 0])]
        for i, start in enumerate(starts[: len(out.labels)]):
            end = pos + int(out.ends[i, 0])
            lines = data[start:end].decode().split("\n")
            line = next(x for x in lines if x.strip())  # blank lines come before a record
            label, dense, ids = parser.parse(line.rstrip("\r").split("\t"))
            assert float(out.labels[i]) == label
            assert out.dense[i].tolist() == dense
            assert out.ids[i].tolist() == ids
            checked += 1
    assert checked > 200


def test_lines_of_other_phases_are_passed_over_even_when_malformed():
    plain = "\t".join(["1", *[""] * 13, *[f"{i:x}" for i in range(26)]])
    text = "\n".join([plain, "not a record", plain, "  ", plain, "zz\tzz"]) + "\n"
    # Lines 10..15: phases 2 to 4 of 5 are lines 12, 13 and 14.
    out = parse_criteo_lines(
        as_tensor(text.encode()), "\t", SIZES, -1, first_line=10, phases=(5, 2, 5)
    )
    assert out.ends[:, 1].tolist() == [3, 5]  # lines 12 and 14; 11 and 15 passed over
    assert out.stop.tolist() == [len(text), 6]
    # Phases 0 and 1: lines 10, 11 and 15; line 11 is malformed, the parse stops there.
    out = parse_criteo_lines(
        as_tensor(text.encode()), "\t", SIZES, -1, first_line=10, phases=(5, 0, 2)
    )
    assert out.ends[:, 1].tolist() == [1] and out.stop.tolist()[1] == 1


def test_edge_sizes_and_line_ends():
    line = "\t".join(["1", "-" + "9" * 18, *[""] * 13, "F" * 16, *[""] * 24])
    for data in (b"", b"\n", line.encode(), (line + "\r\r\n").encode(), (line + "\n\n").encode()):
        out = parse_criteo_lines(as_tensor(data), "\t", SIZES, -1)
        ref = reference.parse_criteo_lines(as_tensor(data), "\t", SIZES, -1)
        for a, b in zip(out, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert int(out.stop[0]) == len(data)
    assert out.dense[0, 0] == -float("9" * 18) and out.ids[0, 0] == -1  # C1 missing
    assert out.ids[0, 1] == (16**16 - 1) % SIZES[1]


def test_bad_arguments_raise():
    text = as_tensor(b"1\n")
    with pytest.raises(RuntimeError, match="need 26 table sizes"):
        parse_criteo_lines(text, "\t", [5] * 25, -1)
    with pytest.raises(RuntimeError, match="table size of feature C3 must be > 0"):
        parse_criteo_lines(text, "\t", [5, 5, 0] + [5] * 23, -1)
    with pytest.raises(RuntimeError, match="1-D uint8"):
        parse_criteo_lines(text.int(), "\t", SIZES, -1)
    with pytest.raises(ValueError, match="one byte"):
        parse_criteo_lines(text, "ab", SIZES, -1)
    for first_line, phases in ((-1, (1, 0, 1)), (0, (0, 0, 0)), (0, (3, 2, 1)), (0, (3, 0, 4))):
        with pytest.raises(RuntimeError, match="phases 0 <= lo <= hi <= modulus"):
            parse_criteo_lines(text, "\t", SIZES, -1, first_line=first_line, phases=phases)


def random_column(rng, n, bad_at=None):
    """n categorical strings (None: null) as Arrow lays them out: offsets, data, valid."""
    strings = []
    for _ in range(n):
        r = rng.random()
        if r < 0.1:
            strings.append(None)
        elif r < 0.2:
            strings.append("")
        else:
            s = f"{rng.getrandbits(4 * rng.randint(1, 16)):0{rng.randint(1, 16)}x}"
            strings.append(s.upper() if rng.random() < 0.3 else s)
    if bad_at is not None:
        strings[bad_at] = rng.choice(["f" * 17, "0x1f", "1f ", "zz", "é", "1\n", "-1"])
    data = b"".join((s or "").encode() for s in strings)
    offsets = [0]
    for s in strings:
        offsets.append(offsets[-1] + len((s or "").encode()))
    valid = torch.tensor([s is not None for s in strings], dtype=torch.bool)
    return strings, torch.tensor(offsets), as_tensor(data), valid


@pytest.mark.parametrize("seed", range(8))
def test_hex_column_matches_the_reference_on_random_strings(seed):
    rng = random.Random(200 + seed)
    n = rng.choice([0, 1, 2, 127, 1000])
    bad_at = rng.randrange(n) if n and rng.random() < 0.5 else None
    strings, offsets, data, valid = random_column(rng, n, bad_at)
    size, missing_id = rng.choice([1, 3, 2**31 - 1, 2**40]), rng.choice([-1, 0])
    offset_dtype = rng.choice([torch.int32, torch.int64])
    for v in (valid, None) if None not in strings else (valid,):
        got = parse_hex_column(offsets.to(offset_dtype), data, v, size, missing_id)
        want = reference.parse_hex_column(offsets.to(offset_dtype), data, v, size, missing_id)
        assert got[1] == want[1] == (-1 if bad_at is None else bad_at)
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)


def test_hex_column_ids_are_what_record_parser_gives():
    rng = random.Random(300)
    strings, offsets, data, valid = random_column(rng, 500)
    parser = RecordParser(SIZES, missing_id=None)
    ids, first_bad = parse_hex_column(offsets, data, valid, SIZES[7], parser.missing)
    assert first_bad == -1
    assert ids.tolist() == [parser._categorical("C8", s, SIZES[7]) for s in strings]


def test_hex_column_edge_values_and_offsets_not_from_zero():
    data = as_tensor(b"xx" + b"F" * 16 + b"0" + b"1f")
    offsets = torch.tensor([2, 18, 19, 19, 21])  # a slice: the first bytes belong to others
    ids, first_bad = parse_hex_column(offsets, data, None, 2**63 - 1, -1)
    assert first_bad == -1
    assert ids.tolist() == [(16**16 - 1) % (2**63 - 1), 0, -1, 0x1F]


def test_hex_column_bad_arguments_raise():
    data = as_tensor(b"1f2")
    with pytest.raises(
        RuntimeError, match=r"non-decreasing.*offsets\[1\] = 2 and offsets\[2\] = 1"
    ):
        parse_hex_column(torch.tensor([0, 2, 1]), data, None, 10, -1)
    with pytest.raises(RuntimeError, match="non-negative"):
        parse_hex_column(torch.tensor([-1, 2]), data, None, 10, -1)
    with pytest.raises(RuntimeError, match="reach byte 4 of 3 bytes"):
        parse_hex_column(torch.tensor([0, 4]), data, None, 10, -1)
    with pytest.raises(RuntimeError, match="int32 or int64"):
        parse_hex_column(torch.tensor([0.0, 2.0]), data, None, 10, -1)
    with pytest.raises(RuntimeError, match=r"n \+ 1 entries"):
        parse_hex_column(torch.empty(0, dtype=torch.int64), data, None, 10, -1)
    with pytest.raises(RuntimeError, match="1-D uint8"):
        parse_hex_column(torch.tensor([0, 2]), data.int(), None, 10, -1)
    with pytest.raises(RuntimeError, match="bool tensor of 1 entries"):
        parse_hex_column(torch.tensor([0, 2]), data, torch.ones(2, dtype=torch.bool), 10, -1)
    with pytest.raises(RuntimeError, match="table_size must be > 0"):
        parse_hex_column(torch.tensor([0, 2]), data, None, 0, -1)
