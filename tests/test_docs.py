"""The documentation site builds in strict mode: a broken API reference
(a renamed public name, a bad docstring) or a dead link fails CI."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_docs_build_strict(tmp_path):
  # mkdocs and mkdocstrings are test dependencies (the docs extra): a
  # missing one fails the build below, never skips it.
  out = subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
       "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
      capture_output=True, text=True, timeout=600, cwd=ROOT,
      env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stdout + out.stderr
  assert (tmp_path / "site" / "api" / "kernels" / "index.html").exists()
