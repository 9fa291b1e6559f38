import shutil
import subprocess
import sys
from pathlib import Path

import recis


def test_import_without_the_extension_says_how_to_build_it(tmp_path):
    source = Path(recis.__file__).parent
    shutil.copytree(source, tmp_path / "recis", ignore=shutil.ignore_patterns("*.so"))
    result = subprocess.run(
        [sys.executable, "-c", "import recis"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "make install" in result.stderr
