"""The diagnostics example's quick mode runs end to end and plots."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.subprocess
def test_diagnostics_digits_quick(tmp_path):
  pytest.importorskip("sklearn")
  pytest.importorskip("matplotlib")
  out = tmp_path / "diagnostics_digits.png"
  env = dict(os.environ, PYTHONPATH=str(ROOT), AUTONTK_QUICK="1")
  run = subprocess.run(
      [sys.executable, str(ROOT / "examples" / "diagnostics_digits.py"),
       "--out", str(out)], env=env, capture_output=True, text=True,
      timeout=600)
  assert run.returncode == 0, run.stderr[-2000:]
  assert "ranked by condition number" in run.stdout
  assert out.stat().st_size > 10_000
