"""The public names of ``zipvl`` are what the README says, in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import zipvl
import zipvl.config
assert "transformers" not in __import__("sys").modules, "config alone must not import transformers"
import zipvl.attention, zipvl.patch, zipvl.cache, zipvl.statistics  # every submodule loaded
for name in ("enable", "disable", "stats"):
    value = getattr(zipvl, name)
    assert callable(value) and not isinstance(value, type(zipvl)), (name, value)
assert zipvl.stats is zipvl.patch.stats
assert isinstance(zipvl.ZipVLCache, type) and isinstance(zipvl.ZipVLStats, type)
assert set(zipvl.__all__) <= set(dir(zipvl)) | set(zipvl._LAZY)
"""


def test_public_names_are_the_functions_not_submodules():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
