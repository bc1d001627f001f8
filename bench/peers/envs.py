"""The peers' own virtual environments, created by the bench on first use.

neural-tangents 0.6.5 does not import on current JAX, so it runs in
``.venv-bench-nt`` with jax 0.4.23; torch runs in ``.venv-bench-torch``. Both
are gitignored and rebuilt when their requirement list changes. Nothing of
either peer is committed: the bench only pip-installs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_DIR = os.path.dirname(BENCH_DIR)

# numpy<2 and scipy<1.13: jax 0.4.23 predates NumPy 2 and scipy's removal of
# the names it imports.
REQUIREMENTS = {
    "nt": ["jax[cpu]==0.4.23", "jaxlib==0.4.23", "neural-tangents==0.6.5",
           "numpy<2", "scipy<1.13"],
    # The CPU wheel of torch 2.13.0 for Python 3.11 lies on this machine's
    # disk (pip takes it); a plain "torch" would pull a CUDA build.
    "torch": ["torch==2.13.0", "numpy<3"],
}
CHECK = {
    "nt": "import jax, neural_tangents; print(jax.__version__, "
          "neural_tangents.__version__)",
    "torch": "import torch; print(torch.__version__)",
}
RUNNER = {"nt": "bench.peers.nt_runner", "torch": "bench.peers.torch_runner"}


def venv_dir(name: str) -> str:
  return os.path.join(REPO_DIR, f".venv-bench-{name}")


def python_of(name: str) -> str:
  return os.path.join(venv_dir(name), "bin", "python")


def _base_python() -> str:
  return getattr(sys, "_base_executable", None) or sys.executable


def ensure(name: str, log=print) -> str | None:
  """Creates (or reuses) the peer's venv; its python, or None on failure.

  ``AUTONTK_BENCH_<NAME>_PYTHON`` (e.g. ``AUTONTK_BENCH_TORCH_PYTHON``)
  names an existing interpreter to use instead (a GPU machine's own torch).
  """
  override = os.environ.get(f"AUTONTK_BENCH_{name.upper()}_PYTHON")
  if override:
    return override
  reqs = REQUIREMENTS[name]
  marker = os.path.join(venv_dir(name), ".bench-requirements.json")
  py = python_of(name)
  try:
    with open(marker) as fh:
      if json.load(fh) == reqs and os.path.exists(py):
        return py
  except (OSError, ValueError):
    pass
  log(f"[envs] creating {venv_dir(name)} with {' '.join(reqs)} (minutes)")
  t0 = time.perf_counter()
  try:
    subprocess.run([_base_python(), "-m", "venv", venv_dir(name)], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", *reqs], check=True,
                   stdout=subprocess.DEVNULL)
    out = subprocess.run([py, "-c", CHECK[name]], check=True,
                         capture_output=True, text=True,
                         env=_env()).stdout.strip()
  except (OSError, subprocess.CalledProcessError) as e:
    log(f"[envs] {name} environment failed: {e}")
    return None
  with open(marker, "w") as fh:
    json.dump(reqs, fh)
  log(f"[envs] {name}: {out} ready in {time.perf_counter() - t0:.0f} s")
  return py


def _env() -> dict[str, str]:
  env = dict(os.environ)
  env["PYTHONPATH"] = REPO_DIR
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  # The peers compare CPU against CPU unless told otherwise.
  env.setdefault("JAX_PLATFORMS", "cpu")
  if "AUTONTK_BENCH_PYTHONPATH" in os.environ:  # extra wheels (bench/gpu.sh)
    env["PYTHONPATH"] += os.pathsep + os.environ["AUTONTK_BENCH_PYTHONPATH"]
  return env


def run(name: str, job: dict[str, Any], work: str, timeout_s: float,
        log=print) -> dict[str, Any]:
  """Runs a peer on ``job``; its results dict, or ``{"error": ...}``."""
  py = ensure(name, log)
  if py is None:
    return {"error": f"{name} environment unavailable"}
  job_path = os.path.join(work, f"{name}_job.json")
  with open(job_path, "w") as fh:
    json.dump(job, fh)
  log_path = os.path.join(work, f"{name}.log")
  t0 = time.perf_counter()
  try:
    with open(log_path, "w") as lf:
      proc = subprocess.run([py, "-m", RUNNER[name], job_path], cwd=REPO_DIR,
                            env=_env(), stdout=lf, stderr=subprocess.STDOUT,
                            timeout=timeout_s)
    rc = proc.returncode
  except subprocess.TimeoutExpired:
    rc = "timeout"
  wall = time.perf_counter() - t0
  res_path = os.path.join(work, f"{name}_results.json")
  try:
    with open(res_path) as fh:
      res = json.load(fh)
  except (OSError, ValueError):
    res = {"cases": {}}
  res["returncode"] = rc
  res["wall_s"] = wall
  if rc != 0:
    res["error"] = f"{name} peer exited with {rc}; see {log_path}"
    log(f"[{name}] {res['error']}")
  return res
