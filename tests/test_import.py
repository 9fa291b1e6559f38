import shutil
import subprocess
import sys
from pathlib import Path

import torch

import recis


def test_import_without_the_extension_says_how_to_build_it(tmp_path):
    source = Path(recis.__file__).parent
    shutil.copytree(source, tmp_path / "recis", ignore=shutil.ignore_patterns("*.so"))
    # -S: no site .pth files, so the editable install cannot point back at the real build.
    site_packages = Path(torch.__file__).parent.parent
    result = subprocess.run(
        [sys.executable, "-S", "-c", "import recis"],
        cwd=tmp_path,
        env={"PYTHONPATH": f"{tmp_path}:{site_packages}"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "make install" in result.stderr
