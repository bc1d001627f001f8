"""ntk_tiled across simulated devices, across processes, and killed/resumed.

Each test starts fresh Python processes: the simulated device count
(``XLA_FLAGS``) must be set before JAX is imported, and jax.distributed needs
one process per participant.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

import autontk

pytestmark = pytest.mark.subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Shared by the workers and the parent: the same model, data and options.
MODEL = textwrap.dedent("""
    import jax, jax.numpy as jnp
    def model():
      k = jax.random.split(jax.random.PRNGKey(7), 4)
      params = {"w": jax.random.normal(k[0], (3, 6)) / 2,
                "v": jax.random.normal(k[1], (6, 2))}
      def f(p, x):
        h = x @ p["w"]
        return {"out": jnp.tanh(h) @ p["v"], "hid": jnp.sin(h)}
      return f, params, jax.random.normal(k[2], (9, 3)), jax.random.normal(
          k[3], (7, 3))
    """)
exec(MODEL)  # defines model()  # noqa: S102

WORKER = MODEL + textwrap.dedent("""
    import json, os, sys, time
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "process":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      jax.distributed.initialize(sys.argv[3], num_processes=2,
                                 process_id=int(sys.argv[4]))
    import numpy as np, autontk
    from autontk.tiled import storage
    f, params, x1, x2 = model()
    if mode == "devices":
      res = {"devices": jax.device_count()}
      for name, opts, y, tile in [
          ("sym", dict(trace_axes=()), None, 2),
          ("cross", dict(vmap_axes=0), x2, (2, 3)),
          ("diag", dict(diagonal_axes=(0,)), x1[::-1], 4)]:
        ntk = autontk.ntk_fn(f, implementation="jacobian_contraction", **opts)
        got = autontk.ntk_tiled(ntk, x1, y, params, tile=tile, progress=False)
        want = ntk(x1, y, params)
        res[name] = max(
            float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
      print("RESULT", json.dumps(res))
    else:
      if mode == "slow":
        write = storage.DiskStore.write
        def slow_write(self, items):
          write(self, items)
          time.sleep(0.4)
        storage.DiskStore.write = slow_write
      ntk = autontk.ntk_fn(f, trace_axes=(),
                           implementation="jacobian_contraction")
      autontk.ntk_tiled(ntk, x1, None, params, tile=2, out=out,
                        progress=False)
      print("RESULT", json.dumps({"process": jax.process_index(),
                                  "devices": jax.device_count()}))
    """)


def _worker(tmp_path, *args, devices=1):
  script = tmp_path / "worker.py"
  script.write_text(WORKER)
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={devices}")
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.Popen([sys.executable, str(script), *map(str, args)],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _result(proc, timeout=240):
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  lines = [s for s in out.splitlines() if s.startswith("RESULT ")]
  assert lines, (out + err)[-3000:]
  return json.loads(lines[-1][len("RESULT "):])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _untiled_symmetric():
  f, params, x1, _ = model()  # noqa: F821 - defined by exec(MODEL)
  ntk = autontk.ntk_fn(f, trace_axes=(), implementation="jacobian_contraction")
  return ntk, ntk(x1, None, params)


def test_four_simulated_devices(tmp_path):
  res = _result(_worker(tmp_path, "devices", "-", devices=4))
  assert res.pop("devices") == 4
  for name, err in res.items():
    assert err < 1e-5, (name, err)


@pytest.mark.slow
def test_two_processes_jax_distributed(tmp_path):
  out = tmp_path / "run"
  addr = f"localhost:{_free_port()}"
  procs = [_worker(tmp_path, "process", out, addr, i, devices=2)
           for i in range(2)]
  try:
    results = [_result(p) for p in procs]
  finally:
    for p in procs:  # a failed peer leaves the other waiting: end both
      if p.poll() is None:
        p.kill()
  assert sorted(r["process"] for r in results) == [0, 1]
  assert all(r["devices"] == 4 for r in results)
  records = [json.loads(s) for s in
             (out / "manifest.jsonl").read_text().splitlines()]
  keys = [tuple(r["tile"]) for r in records]
  assert len(keys) == len(set(keys)) == 15  # upper triangle of 5 × 5 tiles
  assert {r["process"] for r in records} == {0, 1}
  _, want = _untiled_symmetric()
  for i, w in enumerate(jax.tree.leaves(want)):
    got = np.load(out / f"kernel_{i}.npy")
    w = np.asarray(w)
    assert np.max(np.abs(got - w)) / np.max(np.abs(w)) < 1e-5


def test_killed_run_resumes_bit_identically(tmp_path):
  out = tmp_path / "killed"
  manifest = out / "manifest.jsonl"
  proc = _worker(tmp_path, "slow", out)
  deadline = time.time() + 180
  while time.time() < deadline and proc.poll() is None:
    if manifest.exists() and len(manifest.read_bytes().splitlines()) >= 3:
      break
    time.sleep(0.02)
  if proc.poll() is not None:
    _, err = proc.communicate()
    pytest.fail(f"the worker ended before it could be killed: {err[-2000:]}")
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  before = {tuple(json.loads(s)["tile"])
            for s in manifest.read_text().splitlines()}
  assert 3 <= len(before) < 15

  f, params, x1, _ = model()  # noqa: F821 - defined by exec(MODEL)
  ntk = autontk.ntk_fn(f, trace_axes=(), implementation="jacobian_contraction")
  resumed = autontk.ntk_tiled(ntk, x1, None, params, tile=2, out=out,
                              progress=False)
  keys = [tuple(json.loads(s)["tile"])
          for s in manifest.read_text().splitlines()]
  assert len(keys) == len(set(keys)) == 15  # finished tiles not recomputed
  assert before <= set(keys)

  fresh = autontk.ntk_tiled(ntk, x1, None, params, tile=2,
                            out=tmp_path / "fresh", progress=False)
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(fresh)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for a, b in zip(jax.tree.leaves(resumed),
                  jax.tree.leaves(ntk(x1, None, params))):
    b = np.asarray(b)
    assert np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)) < 1e-5
