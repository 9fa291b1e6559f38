import csv
import gzip
import itertools
import logging
import math
import os
import random
import threading
import uuid
from pathlib import Path

import fsspec
import pytest
import torch
import torch.distributed as dist
from fsspec.implementations.memory import MemoryFileSystem

from recis.io import COLUMNS, SPARSE_NAMES, CriteoDataset, RecordParser, readers
from recis.io import dataset as dataset_module
from recis.testing import run_distributed

SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "criteo_sample.txt"
if not SAMPLE.exists():  # worktrees live beside /work/shared
    SAMPLE = Path("/work/shared/data/criteo_sample.txt")

SIZES = [1000 + 37 * i for i in range(26)]


# -- an independent, straightforward parse ------------------------------------------
def expected_rows(rows, sizes=SIZES, missing_id=None):
    """[(label, [13 dense], [26 id lists])] computed field by field."""
    out = []
    for r in rows:
        label = float(r[0])
        dense = [math.log(1 + max(float(x), 0)) if x != "" else 0.0 for x in r[1:14]]
        ids = []
        for x, size in zip(r[14:], sizes, strict=True):
            if x == "":
                ids.append([] if missing_id is None else [missing_id])
            else:
                ids.append([int(x, 16) % size])
        out.append((label, dense, ids))
    return out


def batches_to_rows(batches):
    """The same [(label, dense, ids)] rebuilt from batches."""
    out = []
    for b in batches:
        kjt = b["sparse"]
        assert kjt.keys() == SPARSE_NAMES
        per_feature = []
        for f in SPARSE_NAMES:
            jt = kjt[f]
            off = jt.offsets().tolist()
            vals = jt.values().tolist()
            per_feature.append([vals[off[i] : off[i + 1]] for i in range(kjt.stride())])
        for i in range(kjt.stride()):
            out.append(
                (
                    float(b["label"][i]),
                    b["dense"][i].tolist(),
                    [per_feature[f][i] for f in range(26)],
                )
            )
    return out


def assert_rows_equal(got, want):
    assert len(got) == len(want)
    for (gl, gd, gi), (wl, wd, wi) in zip(got, want, strict=True):
        assert gl == wl
        assert gd == pytest.approx(wd, rel=1e-6, abs=1e-6)
        assert gi == wi


def sample_rows():
    with open(SAMPLE, newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == COLUMNS
        return list(reader)


def random_rows(n, seed, first_c1=0):
    """Criteo-like raw rows; C1 is the row's index in hex so each row is identifiable."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = str(rng.randint(0, 1))
        dense = ["" if rng.random() < 0.2 else str(rng.randint(-3, 5000)) for _ in range(13)]
        cats = [f"{first_c1 + i:08x}"] + [
            "" if rng.random() < 0.15 else f"{rng.getrandbits(32):08x}" for _ in range(25)
        ]
        rows.append([label, *dense, *cats])
    return rows


def write_tsv(path, rows, compress=False):
    text = "".join("\t".join(r) + "\n" for r in rows)
    if compress:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        Path(path).write_text(text)


def write_parquet(path, rows, row_group_size=7):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {"label": pa.array([int(r[0]) for r in rows], pa.int64())}
    for j, name in enumerate(COLUMNS[1:14], start=1):
        cols[name] = pa.array([None if r[j] == "" else float(r[j]) for r in rows], pa.float64())
    for j, name in enumerate(COLUMNS[14:], start=14):
        cols[name] = pa.array([None if r[j] == "" else r[j] for r in rows], pa.string())
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size)


# -- tests ----------------------------------------------------------------------------
def test_sample_matches_independent_parse():
    rows = sample_rows()
    assert len(rows) == 200
    # The sample exercises what the parser must handle.
    assert any(x == "" for r in rows for x in r[1:14])
    assert any(x.startswith("-") for r in rows for x in r[1:14])
    assert any(x == "" for r in rows for x in r[14:])
    ds = CriteoDataset(SAMPLE, batch_size=64, table_sizes=SIZES)
    batches = list(ds)
    assert [b["label"].shape[0] for b in batches] == [64, 64, 64, 8]
    assert all(b["dense"].shape == (b["label"].shape[0], 13) for b in batches)
    assert all(b["dense"].dtype == torch.float32 for b in batches)
    assert_rows_equal(batches_to_rows(batches), expected_rows(rows))


@pytest.mark.parametrize("missing_id", [None, 3])
def test_vectorised_parse_agrees_with_per_record_parse(missing_id):
    rows = sample_rows() + random_rows(30, seed=9)
    rows[5][20] = rows[5][20].upper()
    rows[7][3] = "-12"
    parser = RecordParser(SIZES, missing_id)
    labels, dense, ids = parser.parse_many(rows)
    one_by_one = [parser.parse(r) for r in rows]
    assert labels.tolist() == [r[0] for r in one_by_one]
    assert dense.tolist() == [r[1] for r in one_by_one]
    assert ids.tolist() == [r[2] for r in one_by_one]
    # Anything unusual is left to the per-record parse (which then decides).
    for field, value in [(20, "0x1f"), (20, "1" * 17), (20, "é"), (0, "2"), (3, "nan"), (3, "x")]:
        odd = [list(r) for r in rows[:3]]
        odd[1][field] = value
        assert parser.parse_many(odd) is None
    assert parser.parse_many([rows[0][:39]]) is None
    assert parser.parse_many([[1, *rows[0][1:]]]) is None


def arrow_table(rows, dense_type="float64", cat_type="string", label_type="int64"):
    """Criteo rows as a pyarrow table: nulls for missing values, the given column types
    (categoricals as hex strings, or their integer values)."""
    import pyarrow as pa

    cols = {"label": pa.array([int(r[0]) for r in rows]).cast(label_type)}
    for j, name in enumerate(COLUMNS[1:14], start=1):
        values = [None if r[j] == "" else int(r[j]) for r in rows]
        cols[name] = pa.array(values, pa.int64()).cast(dense_type)
    for j, name in enumerate(COLUMNS[14:], start=14):
        if cat_type in ("string", "large_string"):
            cols[name] = pa.array([r[j] or None for r in rows], cat_type)
        elif cat_type == "dictionary":  # pandas' categoricals come back so
            cols[name] = pa.array([r[j] or None for r in rows]).dictionary_encode()
        else:
            # Integer ids kept within 31 bits, so that int32 holds them too.
            ids = [int(r[j], 16) & 0x7FFFFFFF if r[j] else None for r in rows]
            cols[name] = pa.array(ids, cat_type)
    return pa.table(cols)


def per_record(parser, table):
    columns = [table.column(c).to_pylist() for c in COLUMNS]
    return [parser.parse([col[i] for col in columns]) for i in range(table.num_rows)]


@pytest.mark.parametrize("missing_id", [None, 3])
@pytest.mark.parametrize(
    "types",
    [
        ("float64", "string", "int64"),
        ("int32", "large_string", "float32"),
        ("int64", "int64", "int8"),
        ("float32", "int32", "int64"),
        ("float64", "dictionary", "int64"),
    ],
)
def test_arrow_parse_agrees_with_per_record_parse(missing_id, types):
    import pyarrow as pa

    rows = random_rows(40, seed=10)
    rows[3][20] = rows[3][20].upper()
    rows[4][2] = "-7"
    table = arrow_table(rows, *types)
    parser = RecordParser(SIZES, missing_id)
    # A slice of one chunk (an offset into its Arrow buffers, as a resumed row group
    # has), and two chunks per column.
    two = pa.concat_tables([table, arrow_table(random_rows(9, seed=11), *types)]).slice(5)
    for t in (table, table.slice(7), two):
        labels, dense, ids = parser.parse_arrow(t)
        want = per_record(parser, t)
        assert labels.tolist() == [r[0] for r in want]
        assert dense.tolist() == [r[1] for r in want]
        assert ids.tolist() == [r[2] for r in want]
    # NaN counts are missing, as per record.
    nan = table.set_column(3, "I3", pa.array([float("nan")] * table.num_rows))
    assert parser.parse_arrow(nan)[1][:, 2].tolist() == [0.0] * table.num_rows


@pytest.mark.parametrize("large", [False, True])
def test_hex_ids_read_a_sliced_arrow_array_from_its_offset(large):
    import pyarrow as pa

    from recis.io.criteo import _hex_ids

    strings = ["zz", "1f", None, "", "ffffffffffffffff", "A0", "not hex"]
    array = pa.array(strings, pa.large_string() if large else pa.string()).slice(1, 5)
    assert array.offset == 1  # what combine_chunks() never hands the parser
    assert _hex_ids(array, 1000, -1).tolist() == [0x1F % 1000, -1, -1, (2**64 - 1) % 1000, 0xA0]
    assert _hex_ids(array.slice(3), 1000, -1) is not None
    assert _hex_ids(pa.array(strings).slice(5), 1000, -1) is None  # "not hex" is in view
    assert _hex_ids(array.slice(5), 1000, -1).tolist() == []


def test_arrow_parse_leaves_anything_unusual_to_the_per_record_parse():
    import pyarrow as pa

    rows = random_rows(6, seed=12)
    parser = RecordParser(SIZES)
    base = arrow_table(rows)

    def with_column(name, values, type_=None):
        return base.set_column(COLUMNS.index(name), name, pa.array(values, type_))

    n = len(rows)
    for odd in [
        with_column("label", [2] * n),
        with_column("label", [None] * n, pa.int64()),
        with_column("label", [True] * n),
        with_column("I2", [float("inf")] * n),
        with_column("I2", ["5"] * n),
        with_column("C5", ["1" * 17] * n),
        with_column("C5", ["0x1f"] * n),
        with_column("C5", [" 1f"] * n),
        with_column("C5", ["é"] * n),
        with_column("C5", [1.0] * n),
        with_column("C5", [2**63] * n, pa.uint64()),
        with_column("C5", pa.array(["zz"] * n).dictionary_encode()),
        with_column("C5", pa.array([1] * n).dictionary_encode()),
    ]:
        assert parser.parse_arrow(odd) is None
    assert parser.parse_arrow(base) is not None
    # A dictionary column of nulls only (an empty dictionary) is all missing.
    nulls = with_column("C5", pa.array([None] * n, pa.string()).dictionary_encode())
    assert parser.parse_arrow(nulls)[2][:, 4].tolist() == [parser.missing] * n
    # int8 codes with a full 128-word dictionary: a null code still reads as missing.
    words = pa.array([format(i + 1, "x") for i in range(128)])
    codes = pa.array([127, None] + [0] * (n - 2), pa.int8())
    full = with_column("C5", pa.DictionaryArray.from_arrays(codes, words))
    got = parser.parse_arrow(full)[2][:, 4].tolist()
    assert got[:3] == [128 % parser.table_sizes[4], parser.missing, 1]


def test_sample_missing_id_and_drop_last():
    rows = sample_rows()
    ds = CriteoDataset(SAMPLE, 64, SIZES, missing_id=0, drop_last=True, prefetch=0)
    batches = list(ds)
    assert len(batches) == 3
    assert all(bool((b["sparse"].lengths() == 1).all()) for b in batches)
    assert_rows_equal(batches_to_rows(batches), expected_rows(rows[:192], missing_id=0))
    with pytest.raises(ValueError, match="missing_id"):
        CriteoDataset(SAMPLE, 64, 10, missing_id=10)


@pytest.mark.parametrize("compress", [False, True])
def test_tsv_without_header(tmp_path, compress):
    rows = random_rows(50, seed=1)
    path = tmp_path / ("day.tsv.gz" if compress else "day_0")
    write_tsv(path, rows, compress)
    batches = list(CriteoDataset(path, 16, SIZES))
    assert [b["label"].numel() for b in batches] == [16, 16, 16, 2]
    assert_rows_equal(batches_to_rows(batches), expected_rows(rows))


def test_format_is_told_by_the_first_line_that_is_not_blank(tmp_path):
    rows = random_rows(5, seed=14)
    (tmp_path / "day_1").write_text("\n  \n" + "".join("\t".join(r) + "\n" for r in rows))
    assert readers.detect_format(str(tmp_path / "day_1")) == "tsv"
    assert_rows_equal(
        batches_to_rows(CriteoDataset(tmp_path / "day_1", 8, SIZES)), expected_rows(rows)
    )


@pytest.mark.parametrize("decompressor", ["isal", "stdlib"])
def test_gz_reads_and_resumes_with_either_decompressor(tmp_path, monkeypatch, decompressor):
    if decompressor == "isal":
        igzip = pytest.importorskip("isal.igzip")
        assert readers.GZIP_FILE is igzip.IGzipFile  # the faster one when installed
        monkeypatch.setattr(readers, "GZIP_FILE", igzip.IGzipFile)
    else:
        monkeypatch.setattr(readers, "GZIP_FILE", gzip.GzipFile)
    rows = random_rows(50, seed=15)
    write_tsv(tmp_path / "day.tsv.gz", rows, compress=True)
    full = list(CriteoDataset(tmp_path / "day.tsv.gz", 8, SIZES, prefetch=0))
    assert_rows_equal(batches_to_rows(full), expected_rows(rows))
    ds = CriteoDataset(tmp_path / "day.tsv.gz", 8, SIZES, prefetch=0)
    it = iter(ds)
    next(it), next(it)
    state = ds.state_dict()
    ds.close()
    resumed = CriteoDataset(tmp_path / "day.tsv.gz", 8, SIZES, prefetch=0)
    resumed.load_state_dict(state)  # seeks inside the decompressed stream
    assert all(batch_equal(a, b) for a, b in zip(resumed, full[2:], strict=True))


@pytest.mark.parametrize("block_bytes", [100, 1 << 22])
def test_text_lines_python_must_parse_mixed_with_plain_ones(tmp_path, monkeypatch, block_bytes):
    # Most lines go through the C++ parser in blocks; these, valid for RecordParser
    # but not plain, come to Python one by one: every record must come out as the
    # independent parse says, in order, and resume exactly between any two batches.
    # A 100-byte block is shorter than a line: each block is read on to a line's end.
    monkeypatch.setattr(readers, "TEXT_BLOCK_BYTES", block_bytes)
    rows = random_rows(120, seed=8)
    lines = ["\t".join(r) for r in rows]
    for i in range(0, 120, 7):
        quirky = list(rows[i])
        if i % 3 == 0:
            quirky[0] = " " + quirky[0]  # float(" 1") accepts it
        if i % 3 == 1 and quirky[16] != "":
            quirky[16] = "0x" + quirky[16]  # int("0x..", 16) too
        if i % 3 == 2:
            quirky[2] = quirky[2] + ".0" if quirky[2] else ""
        lines[i] = "\t".join(quirky) + "\r"
    text = "\n".join(lines[:50]) + "\n\n  \n" + "\n".join(lines[50:])  # no final newline
    path = tmp_path / "mixed.tsv"
    path.write_bytes(text.encode())
    full = list(CriteoDataset(path, 11, SIZES, prefetch=0))
    assert_rows_equal(batches_to_rows(full), expected_rows(rows))
    for stop in range(1, len(full)):
        ds = CriteoDataset(path, 11, SIZES, prefetch=0)
        it = iter(ds)
        for _ in range(stop):
            next(it)
        state = ds.state_dict()
        ds.close()
        resumed = CriteoDataset(path, 11, SIZES, prefetch=0)
        resumed.load_state_dict(state)
        rest = list(resumed)
        assert all(batch_equal(a, b) for a, b in zip(rest, full[stop:], strict=True))
        assert len(rest) == len(full) - stop


def test_parquet(tmp_path):
    rows = random_rows(40, seed=2)
    write_parquet(tmp_path / "part.parquet", rows)
    batches = list(CriteoDataset(tmp_path / "part.parquet", 9, SIZES))
    assert_rows_equal(batches_to_rows(batches), expected_rows(rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"label": [1]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet.*lacks column"):
        list(CriteoDataset(tmp_path / "bad.parquet", 9, SIZES))


def batch_equal(a, b):
    return (
        torch.equal(a["dense"], b["dense"])
        and torch.equal(a["label"], b["label"])
        and torch.equal(a["sparse"].values(), b["sparse"].values())
        and torch.equal(a["sparse"].lengths(), b["sparse"].lengths())
    )


@pytest.mark.parametrize("fmt", ["csv", "tsv.gz+parquet"])
def test_exact_resume_mid_file(tmp_path, fmt):
    if fmt == "csv":
        paths = [SAMPLE]
    else:  # several files of two formats: resume inside the second one and across files
        rows = random_rows(60, seed=3)
        write_tsv(tmp_path / "a.tsv.gz", rows[:25], compress=True)
        write_parquet(tmp_path / "b.parquet", rows[25:])
        paths = [tmp_path / "a.tsv.gz", tmp_path / "b.parquet"]
    full = list(CriteoDataset(paths, 7, SIZES, prefetch=0))
    for stop in (1, 4, 5, len(full) - 1):
        ds = CriteoDataset(paths, 7, SIZES, prefetch=3)
        it = iter(ds)
        for _ in range(stop):
            next(it)  # the prefetch thread has read further ahead than this
        state = ds.state_dict()
        ds.close()
        resumed = CriteoDataset(paths, 7, SIZES, prefetch=3)
        resumed.load_state_dict(state)
        rest = list(resumed)
        assert len(rest) == len(full) - stop
        assert all(batch_equal(a, b) for a, b in zip(rest, full[stop:], strict=True))
        # The next epoch starts from the beginning again.
        assert resumed.epoch == 1
        assert batch_equal(next(iter(resumed)), full[0])
        resumed.close()


def test_epoch_progress_counts_the_bytes_handed_out(tmp_path):
    rows = random_rows(80, seed=5)
    write_tsv(tmp_path / "a.tsv", rows[:30])
    write_tsv(tmp_path / "b.tsv.gz", rows[30:50], compress=True)
    write_parquet(tmp_path / "c.parquet", rows[50:])
    paths = [tmp_path / "a.tsv", tmp_path / "b.tsv.gz", tmp_path / "c.parquet"]
    sizes = [os.path.getsize(p) for p in paths]
    total = sum(sizes)
    line_ends = list(itertools.accumulate(len("\t".join(r)) + 1 for r in rows[:50]))

    def expected(rows_out: int) -> float:
        if rows_out <= 30:  # text: the bytes of its lines handed out
            return line_ends[rows_out - 1] / total
        if rows_out <= 50:  # .gz: the part of its decompressed bytes, at most 99%
            passed = (line_ends[rows_out - 1] - line_ends[29]) / (line_ends[49] - line_ends[29])
            return (sizes[0] + int(sizes[1] * min(passed, 0.99))) / total
        # Parquet: its bytes in proportion to its rows.
        return (sizes[0] + sizes[1] + sizes[2] * (rows_out - 50) // 30) / total

    ds = CriteoDataset(paths, 5, SIZES, prefetch=2)
    assert ds.epoch_progress() == 0.0
    seen = []
    for n, _ in enumerate(ds, start=1):
        seen.append(ds.epoch_progress())
        assert seen[-1] == pytest.approx(expected(5 * n)), n
        if n in (3, 8):  # resumes in another dataset with the same fraction
            resumed = CriteoDataset(paths, 5, SIZES)
            resumed.load_state_dict(ds.state_dict())
            assert resumed.epoch_progress() == pytest.approx(seen[-1])
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert ds.epoch == 1 and ds.epoch_progress() == 0.0  # the next epoch, not begun


def test_the_decompressed_size_of_a_gz_file_is_estimated_from_its_start(tmp_path, monkeypatch):
    rows = random_rows(3000, seed=6)
    write_tsv(tmp_path / "day.tsv.gz", rows, compress=True)
    exact = sum(len("\t".join(r)) + 1 for r in rows)
    assert readers.expanded_size(str(tmp_path / "day.tsv.gz")) == exact  # read whole
    monkeypatch.setattr(readers, "GZIP_SAMPLE_BYTES", os.path.getsize(tmp_path / "day.tsv.gz") // 4)
    assert readers.expanded_size(str(tmp_path / "day.tsv.gz")) == pytest.approx(exact, rel=0.05)
    write_tsv(tmp_path / "day.tsv", rows[:5])
    assert readers.expanded_size(str(tmp_path / "day.tsv")) is None  # not compressed


def test_fsspec_urls_read_and_resume_like_local_files(tmp_path):
    rows = random_rows(60, seed=6)
    write_tsv(tmp_path / "a.tsv.gz", rows[:25], compress=True)
    write_parquet(tmp_path / "b.parquet", rows[25:45])
    write_tsv(tmp_path / "c.tsv", rows[45:])
    fs, root = fsspec.core.url_to_fs(f"memory://recis-criteo-{uuid.uuid4().hex}")
    fs.put(f"{tmp_path}/", f"{root}/", recursive=True)
    url = fs.unstrip_protocol(root)
    try:
        local = list(CriteoDataset(tmp_path, 7, SIZES, prefetch=0))
        assert_rows_equal(batches_to_rows(local), expected_rows(rows))
        remote = CriteoDataset(url, 7, SIZES, prefetch=2)
        assert [f.rsplit("/", 1)[-1] for f in remote.all_files] == [
            "a.tsv.gz",
            "b.parquet",
            "c.tsv",
        ]
        assert all(batch_equal(a, b) for a, b in zip(remote, local, strict=True))
        for stop in (2, 5):  # inside the .gz file, inside the Parquet file
            ds = CriteoDataset(url, 7, SIZES)
            it = iter(ds)
            for _ in range(stop):
                next(it)
            state = ds.state_dict()
            ds.close()
            resumed = CriteoDataset(url, 7, SIZES)
            resumed.load_state_dict(state)
            rest = list(resumed)
            assert all(batch_equal(a, b) for a, b in zip(rest, local[stop:], strict=True))
            assert len(rest) == len(local) - stop
        fs.pipe(f"{root}/c.tsv", b"1\t2\n")
        with pytest.raises(ValueError, match=r"memory://.*/c\.tsv:1: "):
            list(CriteoDataset(f"{url}/c.tsv", 7, SIZES))
    finally:
        fs.rm(root, recursive=True)


# -- ranks share the bytes -------------------------------------------------------------
def rank_batches(paths, world_size, batch_size=5, **kwargs):
    """Each rank's batches of ``paths``, read in this process."""
    return [
        list(CriteoDataset(paths, batch_size, SIZES, rank=r, world_size=world_size, **kwargs))
        for r in range(world_size)
    ]


def quirky_text(rows, header=False, delimiter="\t"):
    """``rows`` as text with blank lines, CR line ends and some lines only RecordParser
    takes (so the C++ and Python paths alternate)."""
    lines = [delimiter.join(r) for r in rows]
    for i in range(0, len(rows), 5):
        quirky = list(rows[i])
        quirky[0] = " " + quirky[0]  # float(" 1") accepts it
        lines[i] = delimiter.join(quirky) + "\r"
    lines[len(lines) // 2 : len(lines) // 2] = ["", "  "]
    return (delimiter.join(COLUMNS) + "\n" if header else "") + "\n".join(lines)


@pytest.mark.parametrize("block_bytes", [100, 1 << 22])
@pytest.mark.parametrize("fmt", ["tsv", "csv"])
def test_ranks_cut_one_text_file_at_lines_in_order(tmp_path, monkeypatch, fmt, block_bytes):
    monkeypatch.setattr(readers, "TEXT_BLOCK_BYTES", block_bytes)
    rows = random_rows(60, seed=9)
    path = tmp_path / f"one.{fmt}"
    path.write_text(quirky_text(rows, header=fmt == "csv", delimiter="," if fmt == "csv" else "\t"))
    for world_size in (2, 3, 7, 16):
        per_rank = rank_batches(path, world_size, prefetch=0)
        # Ranks in order read the file in order: each line once, at a line boundary.
        got = [row for batches in per_rank for row in batches_to_rows(batches)]
        assert_rows_equal(got, expected_rows(rows))
        counts = [sum(b["label"].numel() for b in batches) for batches in per_rank]
        assert max(counts) - min(counts) <= 2, counts  # lines differ in length a little


def read_c1(path, fmt, position, end, parser):
    """The C1 (row index) of every record a reader yields from ``position`` to ``end``."""
    out = []
    for item in readers.open_reader(str(path), fmt, position, parser, end):
        if isinstance(item, readers.ParsedBlock):
            out += item.rows[2][:, 0].tolist()
        else:
            out.append(int(item[1][14], 16))
    return out


def read_items(path, fmt, position, parser, phases):
    """(C1, position after it) of every record a reader yields."""
    out = []
    for item in readers.open_reader(str(path), fmt, position, parser, None, phases):
        if isinstance(item, readers.ParsedBlock):
            after = [dict(zip(item.keys, p, strict=True)) for p in item.positions.tolist()]
            out += zip(item.rows[2][:, 0].tolist(), after, strict=True)
        else:
            out.append((int(item[1][14], 16), item[2]))
    return out


@pytest.mark.parametrize("parsed", [True, False], ids=["parsed", "records"])
@pytest.mark.parametrize("fmt", ["tsv", "csv-reordered", "parquet"])
def test_a_reader_keeps_the_records_of_its_phases_and_resumes_in_them(tmp_path, fmt, parsed):
    rows = random_rows(30, seed=14)
    path = tmp_path / "data"
    if fmt == "parquet":
        write_parquet(path, rows, row_group_size=4)
        first = 0  # row i is record i
    elif fmt == "tsv":
        write_tsv(path, rows)
        first = 0  # line i
    else:  # a header (line 0) naming the columns in another order: read record by record
        order = [0, *reversed(range(1, len(COLUMNS)))]  # a header starts with "label"
        lines = [",".join(COLUMNS[i] for i in order)]
        lines += [",".join(r[i] for i in order) for r in rows]
        path.write_text("\n".join(lines) + "\n")
        first = 1
    fmt = fmt.split("-")[0]
    parser = RecordParser(SIZES) if parsed else None
    for phases in ([3, 1, 2], [4, 0, 3], [30, 29, 30]):
        modulus, lo, hi = phases
        got = read_items(path, fmt, None, parser, phases)
        want = [c for c in range(30) if lo <= (c + first) % modulus < hi]
        assert [c for c, _ in got] == want
        # From the position after any record, the rest of the same phases.
        for k in range(len(got)):
            rest = read_items(path, fmt, got[k][1], parser, phases)
            assert [c for c, _ in rest] == want[k + 1 :]
    if fmt == "tsv":  # after a cut inside the file, the line numbers are not known
        with pytest.raises(ValueError, match="phases of its lines needs a line number"):
            read_items(path, fmt, {"from": 5}, parser, [2, 0, 1])


@pytest.mark.parametrize(
    ("parsed", "block_bytes"),
    [(True, 1 << 22), (True, 64), (False, 1 << 22)],
    ids=["blocks", "short-blocks", "records"],
)
@pytest.mark.parametrize("fmt", ["tsv", "csv"])
def test_a_cut_at_any_byte_gives_each_line_to_one_side(
    tmp_path, monkeypatch, fmt, parsed, block_bytes
):
    monkeypatch.setattr(readers, "TEXT_BLOCK_BYTES", block_bytes)
    rows = random_rows(6, seed=12)
    path = tmp_path / f"few.{fmt}"
    path.write_text(quirky_text(rows, header=fmt == "csv", delimiter="," if fmt == "csv" else "\t"))
    parser = RecordParser(SIZES) if parsed else None
    size = path.stat().st_size
    for cut in range(1, size):
        before = read_c1(path, fmt, None, cut, parser)
        after = read_c1(path, fmt, {"from": cut}, None, parser)
        assert before + after == list(range(6)), cut


def test_ranks_cut_a_parquet_file_at_rows(tmp_path):
    rows = random_rows(40, seed=10)
    write_parquet(tmp_path / "one.parquet", rows, row_group_size=7)
    for world_size in (2, 3, 40, 41):
        per_rank = rank_batches(tmp_path / "one.parquet", world_size, prefetch=0)
        got = [row for batches in per_rank for row in batches_to_rows(batches)]
        assert_rows_equal(got, expected_rows(rows))
        counts = [sum(b["label"].numel() for b in batches) for batches in per_rank]
        assert max(counts) - min(counts) <= 1, counts


def test_files_of_uneven_sizes_give_every_rank_as_much(tmp_path):
    # Dealt as files, rank 0 would read 43 rows and rank 1 three: the epoch (which ends
    # when any rank runs out) would leave 40 unread.
    paths, n = write_parts(tmp_path, [40, 2, 3, 1])
    per_rank = rank_batches(paths, 2)
    assert sorted(c1 for batches in per_rank for b in batches for c1 in c1_rows(b)) == list(
        range(n)
    )
    counts = [sum(b["label"].numel() for b in batches) for batches in per_rank]
    assert abs(counts[0] - counts[1]) <= 2, counts


def test_a_gz_file_too_big_for_one_share_is_split_by_lines_with_a_warning(tmp_path, caplog):
    paths, n = write_parts(tmp_path, [400, 2, 3, 1], compress=True)
    with caplog.at_level("WARNING", logger="recis.io.dataset"):
        per_rank = rank_batches(paths, 2)
    # Whole, the big file would leave rank 1 six rows and the epoch 400 unread: both
    # ranks read all of it, keeping alternate lines, and the small files fill the gap.
    assert sorted(c for batches in per_rank for b in batches for c in c1_rows(b)) == list(range(n))
    assert [sum(b["label"].numel() for b in batches) for batches in per_rank] == [203, 203]
    (warning,) = [r.getMessage() for r in caplog.records]  # rank 0 only, once
    assert "can only be read whole (.gz" in warning and "1 of them are split" in warning
    assert "the ranks read 1.98x the data's bytes" in warning


def test_gz_files_go_whole_where_they_make_equal_shares(tmp_path, caplog):
    # Dealt in turn, rank 0 would get 220 rows and rank 1 40.
    paths, _ = write_parts(tmp_path, [100, 10, 100, 10, 20, 20], compress=True)
    with caplog.at_level("WARNING", logger="recis.io.dataset"):
        per_rank = rank_batches(paths, 2)
    assert [sum(b["label"].numel() for b in batches) for batches in per_rank] == [130, 130]
    # Each file whole, by one rank: 100 + 10 + 20 rows each.
    _, states, _ = read_through_resizes(paths, [(2, 1)])
    assert sorted(s["work"] for s in states) == [
        [[0, {}, None], [3, {}, None], [4, {}, None]],
        [[1, {}, None], [2, {}, None], [5, {}, None]],
    ]
    assert not caplog.records


@pytest.mark.parametrize("world_size", [3, 4, 7])
def test_fewer_gz_files_than_ranks_are_split_by_lines(tmp_path, world_size):
    paths, n = write_parts(tmp_path, [40, 41, 39], compress=True)
    per_rank = rank_batches(paths, world_size)
    assert sorted(c for batches in per_rank for b in batches for c in c1_rows(b)) == list(range(n))
    counts = [sum(b["label"].numel() for b in batches) for batches in per_rank]
    assert max(counts) - min(counts) <= 6, counts


def test_a_file_of_unknown_size_is_read_whole(tmp_path, monkeypatch, caplog):
    # Some file systems (HTTP without Content-Length) do not report a file's size.
    monkeypatch.setattr(MemoryFileSystem, "size", lambda self, path: None)
    fs, root = fsspec.core.url_to_fs(f"memory://recis-nosize-{uuid.uuid4().hex}")
    rows = random_rows(10, seed=13)
    fs.pipe(f"{root}/a.tsv", "".join("\t".join(r) + "\n" for r in rows).encode())
    try:
        with caplog.at_level("WARNING", logger="recis.io.dataset"):
            per_rank = rank_batches(fs.unstrip_protocol(f"{root}/a.tsv"), 2)
    finally:
        fs.rm(root, recursive=True)
    assert [c for b in per_rank[0] for c in c1_rows(b)] == [0, 2, 4, 6, 8]  # split by lines
    assert [c for b in per_rank[1] for c in c1_rows(b)] == [1, 3, 5, 7, 9]
    assert "unknown size" in caplog.records[0].getMessage()


def test_measuring_many_files_prints_progress(tmp_path, monkeypatch, caplog):
    from recis.framework import progress

    monkeypatch.setattr(progress, "PROGRESS_SECONDS", 0.0)  # a line per file
    paths, _ = write_parts(tmp_path, [3, 4, 5])
    with caplog.at_level("INFO", logger="recis.framework.progress"):
        list(CriteoDataset(paths, 5, SIZES, rank=0, world_size=2))
        list(CriteoDataset(paths, 5, SIZES, rank=1, world_size=2))  # rank 0 alone says
    lines = [r.getMessage() for r in caplog.records if "measured" in r.getMessage()]
    what = "CriteoDataset: measuring the data files (sizes, Parquet footers)"
    assert [line.rsplit(" (", 1)[0] for line in lines] == [
        f"{what}: {k} of 3 files measured" for k in (1, 2, 3)
    ]
    assert lines[-1].endswith(" files/s)") and " (100%, " in lines[-1]


def test_a_file_that_cannot_be_measured_is_named(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 but not Parquet")
    with pytest.raises(ValueError, match=r"broken\.parquet: cannot read it to share it"):
        list(CriteoDataset(tmp_path / "broken.parquet", 5, SIZES))


def test_a_rank_resumes_exactly_inside_its_part_and_names_lines_by_byte(tmp_path):
    rows = random_rows(90, seed=11)
    path = tmp_path / "one.tsv"
    write_tsv(path, rows)
    full = rank_batches(path, 3)[1]
    for stop in (1, 3, len(full) - 1):
        ds = CriteoDataset(path, 5, SIZES, rank=1, world_size=3)
        it = iter(ds)
        for _ in range(stop):
            next(it)
        state = ds.state_dict()
        ds.close()
        resumed = CriteoDataset(path, 5, SIZES, rank=1, world_size=3)
        resumed.load_state_dict(state)
        rest = list(resumed)
        assert len(rest) == len(full) - stop
        assert all(batch_equal(a, b) for a, b in zip(rest, full[stop:], strict=True))
    # A rank that starts inside a file does not know its line numbers: it names the
    # malformed line by the byte it starts at.
    lines = path.read_bytes().split(b"\n")
    bad = 50
    lines[bad] = b"zz" + lines[bad]
    path.write_bytes(b"\n".join(lines))
    at = sum(len(line) + 1 for line in lines[:bad])
    with pytest.raises(ValueError, match=rf"one\.tsv: line at byte {at}: malformed"):
        list(CriteoDataset(path, 5, SIZES, rank=1, world_size=3))


def test_a_position_of_the_file_split_format_resumes_as_its_file_split(tmp_path):
    # Positions without "position_format" come from when 4 files over 2 ranks were dealt
    # as files 0, 2 and 1, 3, with no work list saved. Rank 0 here had read nothing,
    # rank 1 file 1 and the first line of file 3.
    paths, n = write_parts(tmp_path, [4, 5, 6, 7])
    first = [0, 4, 9, 15]  # the C1 of each file's first row
    second_line = len(Path(paths[3]).read_text().splitlines(keepends=True)[0])
    common = {"world_size": 2, "num_files": 4, "batch_size": 5, "epoch": 0, "malformed": 0}
    states = [
        {**common, "rank": 0, "file": 0, "position": {}, "record": 0},
        {
            **common,
            "rank": 1,
            "file": 1,
            "position": {"offset": second_line, "line": 2},
            "record": 6,
        },
    ]
    for rank, want in (
        (0, [*range(first[0], first[1]), *range(first[2], first[3])]),
        (1, range(first[3] + 1, n)),
    ):
        ds = CriteoDataset(paths, 5, SIZES, rank=rank, world_size=2)
        ds.load_state_dict(states[rank])
        assert [c for b in ds for c in c1_rows(b)] == list(want)
    ds = CriteoDataset(paths, 5, SIZES, rank=0, world_size=1)
    ds.load_resharded_state_dict(states, 0, 1)
    assert sorted(c for b in ds for c in c1_rows(b)) == [
        *range(first[0], first[1]),
        *range(first[2], first[3]),
        *range(first[3] + 1, n),
    ]


# -- a read position resumed on another number of ranks --------------------------------
def c1_rows(batch):
    """The rows of a batch by their index (random_rows writes it into C1)."""
    return batch["sparse"]["C1"].values().tolist()


def read_through_resizes(paths, plan, **dataset_kwargs):
    """Reads ``paths`` with each ``(world_size, batches)`` of ``plan`` in turn: every rank
    takes ``batches`` batches (None: the rest of the epoch), then the next world size
    resumes from all their states. A step may add a dict of CriteoDataset arguments for
    itself. Returns the rows read, the last states and how many rows each rank of the
    last step read."""
    rows, states, counts = [], None, []
    for world, batches, *step_kwargs in plan:
        kwargs = {"prefetch": 0, **dataset_kwargs, **(step_kwargs[0] if step_kwargs else {})}
        new_states, counts = [], []
        for r in range(world):
            ds = CriteoDataset(paths, 5, SIZES, rank=r, world_size=world, **kwargs)
            if states is not None:
                ds.load_resharded_state_dict(states, r, world)
            mine = [c for b in itertools.islice(iter(ds), batches) for c in c1_rows(b)]
            rows += mine
            counts.append(len(mine))
            new_states.append(ds.state_dict())
            ds.close()
        states = new_states
    return rows, states, counts


def write_parts(tmp_path, sizes, compress=False):
    """Files of ``sizes`` rows, numbered through in C1: plain TSV (shared out by bytes)
    or ``.gz`` (read whole, split by lines where they must be)."""
    paths, start = [], 0
    for k, n in enumerate(sizes):
        paths.append(str(tmp_path / f"part{k}.tsv{'.gz' if compress else ''}"))
        write_tsv(paths[-1], random_rows(n, seed=k, first_c1=start), compress)
        start += n
    return paths, start


@pytest.mark.parametrize(
    "plan",
    [
        [(2, 3), (1, None)],  # the rest to one rank
        [(2, 3), (2, None)],  # the same size: dealt again
        [(2, 1), (3, None)],  # over more ranks
        [(2, 3), (5, None)],  # .gz: fewer files left than ranks, split by lines
        [(3, 1), (5, 1), (2, None)],  # .gz: split by lines, again, then fewer ranks
    ],
)
@pytest.mark.parametrize("compress", [False, True], ids=["bytes", "whole-gz"])
def test_resized_ranks_read_the_rest_of_a_file_split_epoch_once(tmp_path, plan, compress):
    paths, n = write_parts(tmp_path, [9, 14, 3, 11, 8, 6], compress)
    rows, states, _ = read_through_resizes(paths, plan)
    assert sorted(rows) == list(range(n))
    # The next epoch is split the usual way again.
    assert all(s["epoch"] == 1 and s["work"] is None for s in states)


@pytest.mark.parametrize(
    "plan",
    [
        [(3, 2), (2, None)],
        [(3, 2), (4, None)],
        [(2, 1), (3, 1), (2, 1), (1, None)],  # the skip rules of two resizes at once
        [(3, 2), (3, 0), (2, None)],  # resized again before reading anything
    ],
)
def test_resized_ranks_read_the_rest_of_gz_files_split_by_lines_once(tmp_path, plan):
    # Fewer .gz files than ranks: each is split by lines between ranks.
    paths, n = write_parts(tmp_path, [23, 24], compress=True)
    rows, states, _ = read_through_resizes(paths, plan)
    assert sorted(rows) == list(range(n))
    assert all(s["epoch"] == 1 and s["work"] is None for s in states)


@pytest.mark.parametrize("world_size", [3, 2, 4])
def test_a_row_split_position_of_format_2_resumes(tmp_path, world_size):
    # Before position format 3, fewer .gz files than ranks made every rank scan every
    # file and keep records i % 3 == rank (i counts records over all files). Here each
    # of 3 ranks had read 10: rank r's last was record 27 + r, row 4 + r of file 1.
    paths, n = write_parts(tmp_path, [23, 24], compress=True)
    with gzip.open(paths[1], "rb") as f:
        lines = f.read().splitlines(keepends=True)
    states = [
        {
            "position_format": 2,
            "rank": r,
            "world_size": 3,
            "num_files": 2,
            "batch_size": 5,
            "epoch": 0,
            "work": [[0, {}, None], [1, {}, None]],
            "split_rows": True,
            "consumed": [],
            "file": 1,
            "position": {"offset": sum(map(len, lines[: 5 + r])), "line": 6 + r},
            "record": 28 + r,
            "malformed": 0,
        }
        for r in range(3)
    ]
    rows = []
    for r in range(world_size):
        ds = CriteoDataset(paths, 5, SIZES, rank=r, world_size=world_size, prefetch=0)
        if world_size == 3:
            ds.load_state_dict(states[r])
        else:
            ds.load_resharded_state_dict(states, r, world_size)
        mine = [c for b in ds for c in c1_rows(b)]
        if world_size == 3:  # each rank goes on with its own records
            assert all(c % 3 == r for c in mine)
        rows += mine
    assert sorted(rows) == list(range(30, n))


def test_a_resized_position_saves_and_resumes_on_the_same_ranks(tmp_path):
    paths, n = write_parts(tmp_path, [9, 14, 3, 11, 8, 6])
    rows, states, _ = read_through_resizes(paths, [(2, 3), (3, 1)])
    # Three ranks, each resumed from its own state of the resized layout.
    for r in range(3):
        ds = CriteoDataset(paths, 5, SIZES, rank=r, world_size=3, prefetch=0)
        ds.load_state_dict(states[r])
        rows += [i for b in ds for i in c1_rows(b)]
    assert sorted(rows) == list(range(n))


def test_resharding_needs_every_saved_rank(tmp_path):
    paths, _ = write_parts(tmp_path, [9, 14, 3])
    _, states, _ = read_through_resizes(paths, [(2, 1)])
    ds = CriteoDataset(paths, 5, SIZES, rank=0, world_size=3)
    with pytest.raises(ValueError, match=r"every saved rank, got ranks \[1\] of world_size 2"):
        ds.load_resharded_state_dict(states[1:], 0, 3)
    with pytest.raises(ValueError, match="rank 0 of 3, asked to load as rank 1 of 3"):
        ds.load_resharded_state_dict(states, 1, 3)
    other = CriteoDataset(paths[:2], 5, SIZES, rank=0, world_size=3)
    with pytest.raises(ValueError, match=r"rank 0: .* saved rank 0 .* \(3 files then, 2 now\)"):
        other.load_resharded_state_dict(states, 0, 3)


def test_a_position_resumes_only_on_the_files_it_was_taken_on(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    for name, seed in (("day_1.tsv", 1), ("day_2.tsv", 2)):
        write_tsv(old / name, random_rows(20, seed))
    ds = CriteoDataset(old, 5, SIZES, prefetch=0)
    next(iter(ds))
    state = ds.state_dict()
    ds.close()
    # The folder moved (or mounted elsewhere): the same files, the same position.
    moved = tmp_path / "moved"
    old.rename(moved)
    resumed = CriteoDataset(moved, 5, SIZES, prefetch=0)
    resumed.load_state_dict(state)
    assert batch_equal(next(iter(resumed)), list(CriteoDataset(moved, 5, SIZES))[1])
    resumed.close()
    # A rolling window of days: as many files, other ones. Without the check the
    # position's offset would be read in another file.
    for name, seed in (("day_2.tsv", 2), ("day_3.tsv", 3)):
        write_tsv(new / name, random_rows(20, seed))
    how = r"other names or order\), so it cannot be resumed on them.*exclude.*io_state"
    with pytest.raises(ValueError, match=how):
        CriteoDataset(new, 5, SIZES).load_state_dict(state)
    with pytest.raises(ValueError, match=how):
        CriteoDataset(new, 5, SIZES, rank=0, world_size=2).load_resharded_state_dict([state], 0, 2)
    # A state saved before the fingerprint existed is checked by its count of files.
    older = {k: v for k, v in state.items() if k != "files_digest"}
    CriteoDataset(new, 5, SIZES).load_state_dict(older)


def test_the_files_layout_digest_follows_names_order_and_sizes(tmp_path, monkeypatch):
    rows = random_rows(20, seed=1)
    for node in ("a", "b", "c"):
        (tmp_path / node).mkdir()
        write_tsv(tmp_path / node / "day_1.tsv", rows)
        write_tsv(tmp_path / node / "day_2.tsv", rows[:7])
    write_tsv(tmp_path / "c" / "day_2.tsv", rows[:6])  # a partial copy
    digest = {n: CriteoDataset(tmp_path / n, 5, SIZES).files_layout_digest() for n in "abc"}
    assert digest["a"] == digest["b"] != digest["c"]
    renamed = tmp_path / "b" / "day_3.tsv"
    (tmp_path / "b" / "day_1.tsv").rename(renamed)
    assert CriteoDataset(tmp_path / "b", 5, SIZES).files_layout_digest() != digest["a"]
    # The first epoch deals the files out by the sizes measured for the digest.
    ds = CriteoDataset(tmp_path / "a", 5, SIZES, prefetch=0)
    ds.files_layout_digest()
    monkeypatch.setattr(dataset_module, "measure", None)  # measuring again would fail
    assert sum(len(b["label"]) for b in ds) == 27


def test_a_position_saved_with_the_files_sizes_resumes_only_on_those_sizes(tmp_path):
    for name, seed in (("day_1.tsv", 1), ("day_2.tsv", 2)):
        write_tsv(tmp_path / name, random_rows(20, seed))
    ds = CriteoDataset(tmp_path, 5, SIZES, prefetch=0)
    ds.shared_setup()  # as Trainer.train() does at its start: the sizes are measured
    next(iter(ds))
    state = ds.state_dict()
    ds.close()
    assert state["files_layout_digest"] == ds.files_layout_digest()
    CriteoDataset(tmp_path, 5, SIZES).load_state_dict(state)
    write_tsv(tmp_path / "day_2.tsv", random_rows(19, 2))  # another day under its name
    how = r"\(the same names, other sizes: replaced, or still being written\?\), so it cannot"
    with pytest.raises(ValueError, match=how):
        CriteoDataset(tmp_path, 5, SIZES).load_state_dict(state)
    # A position saved without its files' sizes measured is checked by their names.
    older = {k: v for k, v in state.items() if k != "files_layout_digest"}
    CriteoDataset(tmp_path, 5, SIZES).load_state_dict(older)


def test_state_rejects_other_layout():
    state = CriteoDataset(SAMPLE, 8, SIZES, rank=0, world_size=2).state_dict()
    with pytest.raises(ValueError, match="world_size"):
        CriteoDataset(SAMPLE, 8, SIZES, rank=0, world_size=3).load_state_dict(state)


def test_malformed_lines(tmp_path, caplog):
    rows = random_rows(10, seed=4)
    lines = ["\t".join(r) for r in rows]
    lines[3] = "\t".join(rows[3][:20])  # too few fields: line 4
    lines[6] = lines[6].replace(rows[6][14], "zzzz", 1)  # not hex: line 7
    lines[8] = "2" + lines[8][1:]  # bad label: line 9
    lines.append("tail")  # the last line, malformed too: line 11
    path = tmp_path / "bad.tsv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"bad\.tsv:4: .*expected 40 fields, got 20"):
        list(CriteoDataset(path, 4, SIZES))
    path.write_text("\n".join(lines[:3] + lines[4:]) + "\n")
    with pytest.raises(ValueError, match=r"bad\.tsv:6: .*'C1'.*hex"):
        list(CriteoDataset(path, 4, SIZES, prefetch=2))
    ds = CriteoDataset(tmp_path / "bad.tsv", 4, SIZES, skip_malformed=True)
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="recis.io.dataset"):
        batches = list(ds)
    assert [b["label"].numel() for b in batches] == [4, 3]  # skipped rows leave no gaps
    # The epoch's end says how many were skipped, and where the first was.
    (warning,) = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert "4 malformed records skipped by the end of epoch 0" in warning
    assert "bad.tsv:4: expected 40 fields, got 20" in warning
    got = batches_to_rows(batches)
    assert ds.num_malformed == 4
    good = [r for i, r in enumerate(rows) if i not in (3, 6, 8)]
    assert_rows_equal(got, expected_rows(good))
    # A malformed line after the last full batch is still counted.
    path.write_text("\n".join(["\t".join(r) for r in rows[:4]] + ["tail"]) + "\n")
    ds = CriteoDataset(path, 4, SIZES, skip_malformed=True)
    assert len(list(ds)) == 1 and ds.num_malformed == 1


def test_a_file_without_labels_is_named_as_such(tmp_path):
    # Criteo's test files: the 39 feature columns, no label.
    path = tmp_path / "test.tsv"
    path.write_text("".join("\t".join(r[1:]) + "\n" for r in random_rows(3, seed=5)))
    with pytest.raises(ValueError, match=r"test\.tsv:1: .*got 39 \(no label column, as in"):
        list(CriteoDataset(path, 4, SIZES))


def test_prefetch_thread_stops_when_iteration_is_abandoned():
    def threads():
        return {t for t in threading.enumerate() if t.name == "recis-prefetch"}

    before = threads()
    ds = CriteoDataset(SAMPLE, 4, SIZES, prefetch=2)
    it = iter(ds)
    next(it)
    (mine,) = threads() - before
    ds.close()
    assert not mine.is_alive()
    before = threads()
    it = iter(ds)
    next(it)
    (mine,) = threads() - before
    it.close()
    assert not mine.is_alive()


# -- multi-rank -------------------------------------------------------------------------
def _rank_rows(paths):
    ds = CriteoDataset(paths, 5, SIZES)
    assert (ds.rank, ds.world_size) == (dist.get_rank(), dist.get_world_size())
    # C1 carries the row's global index (its table is larger than the row count).
    return [int(b["sparse"]["C1"].values()[i]) for b in ds for i in range(b["label"].numel())]


def _check_split(results, n):
    every = sorted(i for r in results for i in r)
    assert every == list(range(n))  # every row exactly once
    counts = [len(r) for r in results]
    assert max(counts) - min(counts) <= 2, counts  # equal shares of the bytes


def _rank_rows_all(*paths):
    return [_rank_rows(p) for p in paths]


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_read_every_row_exactly_once(tmp_path, world_size):
    rows = random_rows(47, seed=5)
    write_tsv(tmp_path / "one.tsv", rows)  # one file, cut between the ranks
    start, files = 0, []
    for k, n in enumerate([9, 14, 3, 11]):  # four files of uneven sizes
        write_tsv(tmp_path / f"part{k}.tsv", random_rows(n, seed=k, first_c1=start))
        files.append(str(tmp_path / f"part{k}.tsv"))
        start += n
    parts = f"file://{tmp_path}/part*.tsv"  # the same four files as an fsspec URL glob
    (tmp_path / "gz").mkdir()
    gz, n_gz = write_parts(tmp_path / "gz", [30, 7, 12], compress=True)  # some split by lines
    results = run_distributed(
        _rank_rows_all, world_size, str(tmp_path / "one.tsv"), files, parts, gz
    )
    _check_split([r[0] for r in results], 47)
    _check_split([r[1] for r in results], start)
    _check_split([r[2] for r in results], start)
    assert sorted(i for r in results for i in r[3]) == list(range(n_gz))
