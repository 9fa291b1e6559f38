import uuid

import fsspec
import pytest

from recis.io import expand_paths, split_files


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
