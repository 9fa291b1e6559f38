import itertools
import random
import uuid

import fsspec
import pytest

from recis.io.split import (
    Span,
    balance_spans,
    expand_paths,
    files_digest,
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
    with pytest.raises(ValueError, match=r"^'nosuchfs://bucket/day_0\.tsv': Protocol not known"):
        expand_paths("nosuchfs://bucket/day_0.tsv")


def test_a_wildcard_skips_the_names_a_folder_listing_skips(data_root):
    # Spark's markers and checksums: "*" matched them on fsspec (and "_*" locally).
    assert names(expand_paths(f"{data_root}/*")) == ["a.tsv", "b.tsv", "c.gz"]
    assert names(expand_paths(f"{data_root}/*/*")) == ["d.tsv"]
    assert names(expand_paths(f"{data_root}/_*")) == ["_SUCCESS"]  # named: kept
    assert names(expand_paths(f"{data_root}/.h*")) == [".hidden"]


def test_a_file_named_twice_is_an_error_not_read_twice(data_root):
    with pytest.raises(ValueError) as raised:
        expand_paths([data_root, f"{data_root}/*.tsv"])
    assert str(raised.value) == (
        f"{expand_paths(data_root)[0]} is named twice (by {data_root!r} and "
        f"'{data_root}/*.tsv'): its records would be read twice an epoch; name each file once"
    )
    if "://" not in data_root:  # local paths are compared as absolute paths
        with pytest.raises(ValueError, match="is named twice"):
            expand_paths([f"{data_root}/a.tsv", f"{data_root}/./a.tsv"])


def test_a_folder_of_partition_folders_names_the_glob_that_reads_them(data_root):
    fs, path = fsspec.core.url_to_fs(data_root)
    for day in range(5):
        fs.makedirs(f"{path}/days/day={day}", exist_ok=True)
        fs.pipe(f"{path}/days/day={day}/part-0.parquet", b"x")
    fs.makedirs(f"{path}/days/_temporary", exist_ok=True)  # Spark's, still ignored
    fs.pipe(f"{path}/days/_temporary/part-9.parquet", b"x")
    with pytest.raises(ValueError) as raised:
        expand_paths(f"{data_root}/days")
    assert str(raised.value) == (
        f"no data files in '{data_root}/days': its 5 subfolder(s) (day=0, day=1, day=2, ...) "
        f"are not read; name their files with a glob, such as {data_root}/days/*/*"
    )
    assert len(expand_paths(f"{data_root}/days/*/*")) == 5


def test_split_files_deals_whole_files_or_rows():
    files = [f"f{i}" for i in range(5)]
    assert split_files(files, 1, 2) == (["f1", "f3"], False)
    assert split_files(files[:1], 1, 2) == (["f0"], True)


# -- shares by bytes ----------------------------------------------------------------
def text_span(file, size):
    return Span(file, {}, None, 0, size, size, "bytes")


def gz_span(file, size):
    return Span(file, {}, None, weight=size)


def files_and_phases(shares):
    return [[(s.file, s.lo, s.hi) for s in mine] for mine in shares]


@pytest.mark.parametrize("world_size", [1, 2, 3, 7, 64])
def test_byte_shares_are_equal_and_meet_exactly(world_size):
    sizes = [0, 1000, 17, 0, 250, 3333, 0]  # empty files first, among and last
    spans = [text_span(i, n) for i, n in enumerate(sizes)]
    total = sum(sizes)
    covered = {i: [] for i in range(len(sizes))}
    for r, mine in enumerate(balance_spans(spans, world_size)):
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
    got = [[(s.file, s.start, s.end) for s in mine] for mine in balance_spans(spans, 3)]
    assert got == [
        [(0, {}, None)],
        [(1, {}, 5)],  # bytes 500-1000 of the 1500 are the file's first 500: rows 0-4
        [(1, {"row": 5}, None)],
    ]


def test_parquet_alone_is_shared_by_rows():
    # Rows 0-9 and rows 2-4 of two files whose rows differ in size: 13 rows, not bytes.
    spans = [Span(0, {}, None, 0, 10, 1000, "rows"), Span(1, {"row": 2}, 5, 2, 5, 9000, "rows")]
    assert files_and_phases(balance_spans(spans, 2)) == [[(0, 0, 6)], [(0, 6, 10), (1, 2, 5)]]
    # More ranks than rows: the ranks whose share holds no row get nothing.
    parts = balance_spans([spans[1]], 5)
    assert [[(s.lo, s.hi) for s in p] for p in parts] == [[], [(2, 3)], [], [(3, 4)], [(4, 5)]]


def test_whole_files_go_whole_heaviest_first_to_the_most_room():
    sizes = [100, 10, 100, 10, 20, 20]  # every other file to each rank: 220 against 40
    spans = [gz_span(i, w) for i, w in enumerate(sizes)]
    shares = balance_spans(spans, 2)
    assert [[s.file for s in mine] for mine in shares] == [[0, 1, 4], [2, 3, 5]]
    assert all(s.phases is None for mine in shares for s in mine)  # every record
    assert whole_file_warning(spans, shares) is None


def test_files_that_do_not_fit_whole_are_split_by_phases():
    three = [gz_span(i, 100) for i in range(3)]
    assert files_and_phases(balance_spans(three, 2)) == [
        [(0, 0, 2), (2, 0, 1)],  # file 2's records 0, 2, 4, ... on rank 0
        [(1, 0, 2), (2, 1, 2)],
    ]
    assert balance_spans(three, 2)[0][1].phases == [2, 0, 1]
    # Fewer files than ranks: each rank reads at most two, not all three.
    assert files_and_phases(balance_spans(three, 4)) == [
        [(0, 0, 3)],
        [(0, 3, 4), (1, 0, 2)],
        [(1, 2, 4), (2, 0, 1)],
        [(2, 1, 4)],
    ]
    # Text fills the room whole files leave; a file of unknown size (weight 0) counts
    # as the mean of the others (52) and goes whole to the rank with the most room.
    mixed = [text_span(0, 100), Span(1, {}, None), text_span(2, 5)]
    assert files_and_phases(balance_spans(mixed, 2)) == [
        [(0, 0, 78)],
        [(0, 78, 100), (1, 0, 2), (2, 0, 5)],
    ]


def test_a_resumed_part_keeps_its_phases_and_a_single_phase_is_not_cut():
    resumed = Span(0, {"offset": 9, "line": 3}, None, 1, 3, 200, "phases", 4)
    shares = balance_spans([resumed], 2)
    assert files_and_phases(shares) == [[(0, 1, 2)], [(0, 2, 3)]]
    assert shares[1][0].start == resumed.start and shares[1][0].phases == [4, 2, 3]
    single = Span(0, {"offset": 9}, None, 0, 1, 200, "phases", 1)
    assert files_and_phases(balance_spans([single, text_span(1, 10)], 3)) == [
        [],
        [(0, 0, 1)],
        [(1, 0, 10)],
    ]


@pytest.mark.parametrize("seed", range(20))
def test_every_record_of_every_file_goes_to_one_rank(seed):
    rng = random.Random(seed)
    world_size = rng.choice([1, 2, 3, 5, 8, 16, 24])
    spans = [
        gz_span(i, rng.randint(50, 5000))
        if rng.random() < 0.7
        else text_span(i, rng.randint(0, 5000))
        for i in range(rng.randint(1, 30))
    ]
    shares = balance_spans(spans, world_size)
    for span in spans:
        parts = sorted((s.lo, s.hi) for mine in shares for s in mine if s.file == span.file)
        if span.unit == "bytes" and span.weight == 0:
            assert parts == []
            continue
        # The parts tile the file: its bytes if text, its world_size phases if whole.
        assert parts[0][0] == 0
        assert parts[-1][1] == (span.hi if span.unit == "bytes" else world_size)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
    # Shares come out equal to a phase of the biggest file, and a rank reads through
    # at most two files of which it keeps only some records.
    total = sum(s.weight for s in spans)
    phase = max(s.weight for s in spans) // world_size + 1
    for mine in shares:
        assert abs(sum(s.weight for s in mine) - total / world_size) <= phase
        assert sum(s.phases is not None for s in mine) <= 2


def test_what_is_left_of_a_span_after_a_reader_position():
    text = Span(0, {}, None, 100, 300, 200, "bytes")
    assert text.left_after({}) == 200
    assert text.left_after({"offset": 150, "line": 9}) == 150
    assert text.left_after({"from": 100}) == 200
    assert text.left_after({"offset": 300}) == 0
    rows = Span(1, {}, None, 10, 20, 1000, "rows")
    assert rows.left_after({"row": 15}) == 500 and rows.left_after({"row": 20}) == 0
    # A file read whole (for its phases 0-3 of 8) is passed through by decompressed
    # bytes, weighed against its size decompressed when that is known.
    whole = Span(2, {}, None, 0, 4, 800, "phases", 8)
    assert whole.left_after({"offset": 5000, "line": 12}) == 800
    assert whole.left_after({"offset": 5000, "line": 12}, expanded=20000) == 600
    assert whole.left_after({"offset": 25000, "line": 99}, expanded=20000) == 8  # 99% at most


def test_the_files_digest_names_the_files_wherever_their_folder_is():
    days = ["/data/criteo/day_1.tsv", "/data/criteo/day_2.tsv"]
    assert files_digest(days) == files_digest(["/mnt/copy/day_1.tsv", "/mnt/copy/day_2.tsv"])
    assert files_digest(days) == files_digest(
        ["s3://bucket/x/day_1.tsv", "s3://bucket/x/day_2.tsv"]
    )
    assert files_digest(["/a/day_1.tsv"]) == files_digest(["/b/c/day_1.tsv"])
    others = [
        ["/data/criteo/day_2.tsv", "/data/criteo/day_1.tsv"],  # order
        ["/data/criteo/day_2.tsv", "/data/criteo/day_3.tsv"],  # a rolling window
        ["/data/criteo/day_1.tsv", "/data/criteo/day_2.tsv.gz"],
        ["/data/criteo/day_1.tsv"],
    ]
    assert len({files_digest(days), *(files_digest(f) for f in others)}) == 5
    # Folders below the common one are part of the names.
    parts = ["/d/day=1/part-0.parquet", "/d/day=2/part-0.parquet"]
    assert files_digest(parts) != files_digest(
        ["/d/day=2/part-0.parquet", "/d/day=3/part-0.parquet"]
    )
