"""The predictions example runs end to end at tiny sizes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]


def test_predict_digits_quick(tmp_path):
  pytest.importorskip("sklearn")
  out = tmp_path / "p.png"
  env = dict(os.environ, PYTHONPATH=ROOT)
  p = subprocess.run(
      [sys.executable, os.path.join(ROOT, "examples", "predict_digits.py"),
       "--quick", "--out", str(out)],
      capture_output=True, text=True, env=env, timeout=600)
  assert p.returncode == 0, p.stderr[-2000:]
  line = [s for s in p.stdout.splitlines() if "dense vs matrix-free" in s][0]
  assert float(line.rsplit("<=", 1)[1]) < 1e-3
