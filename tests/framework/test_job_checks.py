"""What the ranks compare at a job's start (multi-rank: test_trainer_errors)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

import recis
from recis.framework.job_checks import code_digest, optimizer_hyperparameters, recis_code_digest


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


def test_hyperparameters_are_named_by_role_and_group_with_tensors_as_numbers():
    one, two = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    dense = torch.optim.Adam(
        [{"params": one.parameters()}, {"params": two.parameters(), "lr": 0.5}],
        lr=torch.tensor(0.25),
    )
    sparse = torch.optim.SGD(one.parameters(), lr=0.1)
    found = optimizer_hyperparameters({"dense": dense, "sparse": sparse, "eval": None})
    assert found["the dense optimizer's lr (param group 0)"] == 0.25
    assert found["the dense optimizer's lr (param group 1)"] == 0.5
    assert found["the dense optimizer's betas (param group 0)"] == (0.9, 0.999)
    assert found["the sparse optimizer's lr"] == 0.1
    assert not any("params" in key or "eval" in key for key in found)
