import itertools
import uuid

import fsspec
import pytest

from recis.io.split import (
    Span,
    balance_spans,
    deal_whole_files,
    expand_paths,
    split_files,
    whole_file_warning,
)


@pytest.fixture(params=["local", "memory"])
def data_root(request, tmp_path):
    """A folder of data files, local or behind an fsspec URL: b.tsv, a.tsv, c.gz, the
    Spark marker _SUCCESS, a hidden file and a sub-folder."""
    memory = f"memory://recis-test-{uuid.uuid4().hex}"
    root = str(tmp_path) if request.param == "local" else memory
    fs, path = fsspec.core.url_to_fs(root)
    fs.makedirs(f"{path}/sub", exist_ok=True)
    for name in ("b.tsv", "a.tsv", "c.gz", "_SUCCESS", ".hidden", "sub/d.tsv"):
        fs.pipe(f"{path}/{name}", b"x\n")
    yield root
    if request.param == "memory":
        fs.rm(path, recursive=True)


def names(files):
    return [f.rsplit("/", 1)[-1] for f in files]


def test_a_folder_expands_to_its_data_files_sorted(data_root):
    assert names(expand_paths(data_root)) == ["a.tsv", "b.tsv", "c.gz"]


def test_globs_expand_sorted_and_files_stay_as_given(data_root):
    assert names(expand_paths(f"{data_root}/*.tsv")) == ["a.tsv", "b.tsv"]
    assert expand_paths([f"{data_root}/b.tsv", f"{data_root}/a.tsv"]) == [
        f"{data_root}/b.tsv",
        f"{data_root}/a.tsv",
    ]


def test_expanded_urls_open_as_the_same_files(data_root):
    for url in expand_paths(data_root):
        with fsspec.open(url, "rb") as f:
            assert f.read() == b"x\n"


def test_nothing_found_names_the_path(data_root):
    with pytest.raises(ValueError, match=r"no such file or directory: .*missing\.tsv"):
        expand_paths(f"{data_root}/missing.tsv")
    with pytest.raises(ValueError, match=r"no file matches .*\*\.parquet"):
        expand_paths(f"{data_root}/*.parquet")
    fs, path = fsspec.core.url_to_fs(data_root)
    fs.makedirs(f"{path}/markers", exist_ok=True)
    fs.pipe(f"{path}/markers/_SUCCESS", b"")
    with pytest.raises(ValueError, match="no data files"):
        expand_paths(f"{data_root}/markers")


def test_split_files_deals_whole_files_or_rows():
    files = [f"f{i}" for i in range(5)]
    assert split_files(files, 1, 2) == (["f1", "f3"], False)
    assert split_files(files[:1], 1, 2) == (["f0"], True)


# -- shares by bytes ----------------------------------------------------------------
def text_span(file, size):
    return Span(file, {}, None, 0, size, size, "bytes")


def shares(spans, world_size):
    return [balance_spans(spans, r, world_size) for r in range(world_size)]


@pytest.mark.parametrize("world_size", [1, 2, 3, 7, 64])
def test_byte_shares_are_equal_and_meet_exactly(world_size):
    sizes = [1000, 17, 0, 250, 3333]
    spans = [text_span(i, n) for i, n in enumerate(sizes)]
    total = sum(sizes)
    covered = {i: [] for i in range(len(sizes))}
    for r, (mine, split_rows) in enumerate(shares(spans, world_size)):
        assert not split_rows
        # Each rank's share is its exact slice of the total, in file order.
        assert (
            sum(s.hi - s.lo for s in mine)
            == (r + 1) * total // world_size - r * total // world_size
        )
        assert [s.file for s in mine] == sorted(s.file for s in mine)
        for s in mine:
            covered[s.file].append((s.lo, s.hi, s.start, s.end))
    for i, size in enumerate(sizes):
        parts = sorted(covered[i])
        if size == 0:
            assert parts == []
            continue
        # The parts of a file tile it: a cut starts the next part where the last ended.
        assert parts[0][:3] == (0, parts[0][1], {})
        assert parts[-1][1] == size and parts[-1][3] is None
        for (_, hi, _, end), (lo, _, start, _) in itertools.pairwise(parts):
            assert hi == lo == end and start == {"from": lo}


def test_row_shares_cut_rows_in_proportion_to_bytes():
    # A Parquet file of 10 rows in 1000 bytes after a text file of 500 bytes.
    spans = [text_span(0, 500), Span(1, {}, None, 0, 10, 1000, "rows")]
    got = [[(s.file, s.start, s.end) for s in mine] for mine, _ in shares(spans, 3)]
    assert got == [
        [(0, {}, None)],
        [(1, {}, 5)],  # bytes 500-1000 of the 1500 are the file's first 500: rows 0-4
        [(1, {"row": 5}, None)],
    ]


def test_parquet_alone_is_shared_by_rows():
    # Rows 0-9 and rows 2-4 of two files whose rows differ in size: 13 rows, not bytes.
    spans = [Span(0, {}, None, 0, 10, 1000, "rows"), Span(1, {"row": 2}, 5, 2, 5, 9000, "rows")]
    got = [[(s.file, s.lo, s.hi) for s in mine] for mine, _ in shares(spans, 2)]
    assert got == [[(0, 0, 6)], [(0, 6, 10), (1, 2, 5)]]
    # More ranks than rows: the ranks whose share holds no row get nothing.
    parts = [mine for mine, _ in shares([spans[1]], 5)]
    assert [[(s.lo, s.hi) for s in p] for p in parts] == [[], [(2, 3)], [], [(3, 4)], [(4, 5)]]


def test_a_file_read_only_whole_makes_every_file_whole():
    # File 1's size is unknown (weight 0): it counts as the mean of the others, 52.
    spans = [text_span(0, 100), Span(1, {}, None), text_span(2, 5)]
    assert shares(spans, 2) == [([spans[0]], False), ([spans[1], spans[2]], False)]
    assert shares(spans, 4)[3] == (spans, True)


def test_whole_files_are_dealt_heaviest_first_to_the_lightest_share():
    sizes = [100, 10, 100, 10, 20, 20]  # every other file to each rank: 220 against 40
    spans = [Span(i, {}, None, weight=w) for i, w in enumerate(sizes)]
    parts = [deal_whole_files(spans, r, 2) for r in range(2)]
    assert [[s.file for s in mine] for mine, _ in parts] == [[0, 1, 4], [2, 3, 5]]
    assert [sum(s.weight for s in mine) for mine, _ in parts] == [130, 130]
    assert not any(split for _, split in parts)
    assert whole_file_warning(spans, 2) is None
    # Every span once, whatever the world size.
    for world in (2, 3, 5, 6):
        dealt = [s.file for r in range(world) for s in deal_whole_files(spans, r, world)[0]]
        assert sorted(dealt) == list(range(6))


def test_files_read_whole_warn_when_the_shares_come_out_unequal():
    mib = 2**20
    even = [Span(i, {}, None, weight=mib) for i in range(4)]
    assert whole_file_warning(even, 2) is None
    assert whole_file_warning([text_span(0, 10), text_span(1, 99)], 2) is None  # cut
    uneven = [Span(0, {}, None, weight=40 * mib), *even[1:]]
    message = whole_file_warning(uneven, 2)
    # Rank 0 holds 40 MiB, rank 1 3 MiB: both stop after ~3, of 43 in all.
    assert "from 3.0 MiB to 40.0 MiB" in message and "about 86% of its records unread" in message
    message = whole_file_warning([even[0], text_span(1, 5)], 3)
    assert "every rank reads all of them and keeps one record in 3" in message
