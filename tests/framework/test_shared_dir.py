"""The ring check that every rank sees one output_dir (multi-rank: test_checkpoint_saver)."""

from __future__ import annotations

import threading

from recis.framework.checkpoint.shared_dir import next_writer, sees_next_writer
from recis.framework.checkpoint.storage import LocalStorage


def test_each_rank_looks_at_the_next_rank_that_wrote_a_file():
    assert [next_writer(["a", "b", "c"], r) for r in range(3)] == [1, 2, 0]
    assert [next_writer([None, "b", None, "d"], r) for r in range(4)] == [1, 3, 3, 1]
    assert next_writer(["a", None], 0) is None  # no other rank wrote one
    assert next_writer(["a"], 0) is None


def test_a_file_that_shows_up_late_is_waited_for(tmp_path):
    late = tmp_path / "late"
    threading.Timer(0.3, late.write_bytes, (b"x",)).start()
    assert sees_next_writer(LocalStorage(), [None, str(late)], ["a", "b"], 0, wait_s=10) is None


def test_a_file_never_seen_names_both_ranks_and_hosts(tmp_path):
    error = sees_next_writer(
        LocalStorage(), [str(tmp_path / "x"), str(tmp_path / "y")], ["a", "b"], 0, wait_s=0.2
    )
    assert error.startswith("it is not one directory shared by all ranks: rank 0 (host a) ")
    assert f"does not see {tmp_path}/y, which rank 1 (host b) wrote" in error
