"""What the ranks compare at a job's start (multi-rank: test_trainer_errors)."""

from __future__ import annotations

import shutil
from pathlib import Path

import recis
from recis.framework.job_checks import code_digest, recis_code_digest


def test_the_code_digest_follows_the_python_files_not_where_they_live(tmp_path):
    package = Path(recis.__file__).parent
    a, b = tmp_path / "a" / "recis", tmp_path / "b" / "recis"
    for copy in (a, b):
        shutil.copytree(package, copy, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    assert code_digest(a) == code_digest(b) == recis_code_digest()
    (b / "framework" / "trainer.py").write_text((b / "framework" / "trainer.py").read_text() + "\n")
    assert code_digest(b) != code_digest(a)
    (b / "framework" / "trainer.py").rename(b / "framework" / "trainer2.py")
    assert code_digest(b) != code_digest(a)
