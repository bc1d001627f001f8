"""Parity of ``autontk.predict`` with neural-tangents 0.6.5's ``predict``.

Both libraries predict from the *same* kernels (an MLP's empirical NTK and
NNGP, computed once by autontk and handed to neural-tangents in an .npz), in
float64, and the largest relative difference per prediction is recorded with
each side's time (the best of 3 to 9 runs after a warm-up; building the
predictor, its factorization and the call are all timed). The ensemble case
lets each library compute its own empirical kernels from the same network.

The suite ``predict_parity`` of ``python -m bench``; neural-tangents runs in
its own environment (jax 0.4.23, built by :mod:`bench.peers.envs`), where
this file is run again as ``python -m bench.predict_parity --peer KERNELS``.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

from bench.peers import envs

N, N_TEST, D, WIDTH, O = 128, 32, 16, 64, 10
REPEATS = 9
"""Timed runs at most (at least 3; more while they take under 5 s)."""
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mlp(p, x):
  import jax.numpy as jnp
  h = jnp.tanh(x @ p["w1"] + p["b1"])
  return h @ p["w2"] + p["b2"]


def arrays() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {"w1": rng.standard_normal((D, WIDTH)) / D ** 0.5,
          "b1": 0.1 * rng.standard_normal(WIDTH),
          "w2": rng.standard_normal((WIDTH, O)) / WIDTH ** 0.5,
          "b2": 0.1 * rng.standard_normal(O),
          "x_train": rng.standard_normal((N, D)),
          "x_test": rng.standard_normal((N_TEST, D)),
          "y_train": np.eye(O)[rng.integers(0, O, N)]}


def cases(predict, kernel_fn, k, jnp, jax):
  """name -> a function computing the prediction (a list of arrays), the
  same calls for both libraries."""
  p = {n: jnp.asarray(k[n]) for n in ("w1", "b1", "w2", "b2")}
  x, xt, y = (jnp.asarray(k[n]) for n in ("x_train", "x_test", "y_train"))
  fx0, fxt0 = mlp(p, x), mlp(p, xt)
  kern = collections.namedtuple("Kernel", "nngp ntk")
  traced = {n: jnp.asarray(k[n]) for n in ("ntk", "ntk_td", "nngp", "nngp_td",
                                           "nngp_tt", "ntk_tt")}
  full = {n: jnp.asarray(k["full_" + n]) for n in ("ntk", "ntk_td")}
  ts = jnp.array([1., 10., 100., 1000.])
  ce = lambda f, y: -jnp.mean(jax.nn.log_softmax(f) * y)

  def mse(kk, kt, t, axes, reg):
    fn = predict.gradient_descent_mse(kk, y, 1., reg, trace_axes=axes)
    return list(fn(t, fx0, fxt0, kt))

  def gp(get):
    fn = predict.gp_inference(kern(traced["nngp"], traced["ntk"]), y, 1e-3)
    out = fn(get, kern(traced["nngp_td"], traced["ntk_td"]),
             kern(traced["nngp_tt"], traced["ntk_tt"]))
    return [out.mean, out.covariance]

  def ensemble(t):
    fn = predict.gradient_descent_mse_ensemble(
        kernel_fn(mlp, trace_axes=(-1,)), x, y, 1., 1e-3, params=p)
    out = fn(t, xt, ("nngp", "ntk"), True)
    return [out.nngp.mean, out.nngp.covariance, out.ntk.mean,
            out.ntk.covariance]

  return {
      "gradient_descent_mse, traced, t=None": lambda: mse(
          traced["ntk"], traced["ntk_td"], None, (-1,), 0.),
      "gradient_descent_mse, traced, 4 times, diag_reg": lambda: mse(
          traced["ntk"], traced["ntk_td"], ts, (-1,), 1e-3),
      "gradient_descent_mse, untraced, t=None": lambda: mse(
          full["ntk"], full["ntk_td"], None, (), 1e-4),
      "gradient_descent_mse, untraced, 4 times": lambda: mse(
          full["ntk"], full["ntk_td"], ts, (), 0.),
      "gp_inference, nngp + cov": lambda: gp("nngp"),
      "gp_inference, ntk + cov": lambda: gp("ntk"),
      "gradient_descent_mse_ensemble, t=None": lambda: ensemble(None),
      "gradient_descent_mse_ensemble, 4 times": lambda: ensemble(ts),
      "max_learning_rate, momentum 0.9": lambda: [jnp.asarray(
          predict.max_learning_rate(full["ntk"], y.size, 0.9))],
      "gradient_descent (cross-entropy ODE), 4 times": lambda: list(
          predict.gradient_descent(ce, traced["ntk"], y, 1.)(
              ts, fx0, fxt0, traced["ntk_td"])),
  }


def run_all(predict, kernel_fn, k) -> dict[str, dict]:
  import jax
  import jax.numpy as jnp
  out = {}
  for name, fn in cases(predict, kernel_fn, k, jnp, jax).items():
    values = jax.block_until_ready(fn())
    times = []
    while len(times) < 3 or (len(times) < REPEATS and sum(times) < 5.):
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times.append(time.perf_counter() - t0)
    out[name] = {"values": [np.asarray(v, np.float64) for v in values],
                 "seconds": min(times)}
  return out


def peer(path: str) -> None:
  """In neural-tangents' environment: predictions from the saved kernels."""
  import jax
  import neural_tangents as nt
  k = dict(np.load(path))
  res = run_all(nt.predict, nt.empirical_kernel_fn, k)
  np.savez(path + ".nt.npz", **{f"{n}|{i}": v for n, r in res.items()
                                for i, v in enumerate(r["values"])})
  with open(path + ".nt.json", "w") as fh:
    json.dump({"versions": {"jax": jax.__version__,
                            "neural_tangents": nt.__version__},
               "seconds": {n: r["seconds"] for n, r in res.items()}}, fh)


def kernels() -> dict[str, np.ndarray]:
  import jax.numpy as jnp
  import autontk
  k = arrays()
  p = {n: jnp.asarray(k[n]) for n in ("w1", "b1", "w2", "b2")}
  x, xt = jnp.asarray(k["x_train"]), jnp.asarray(k["x_test"])
  for axes, prefix in (((-1,), ""), ((), "full_")):
    kf = autontk.empirical_kernel_fn(mlp, trace_axes=axes)
    for suffix, (a, b) in (("", (x, None)), ("_td", (xt, x)),
                           ("_tt", (xt, None))):
      both = kf(a, b, ("nngp", "ntk"), p)
      k[prefix + "nngp" + suffix] = np.asarray(both.nngp)
      k[prefix + "ntk" + suffix] = np.asarray(both.ntk)
  return k


def run(cfg: Any, log: Callable[..., None]) -> dict[str, Any]:
  """The suite: both libraries' predictions from the same kernels."""
  del cfg
  nt_python = envs.ensure("nt", log)
  if nt_python is None:
    raise RuntimeError("the neural-tangents environment could not be built")
  import jax
  import autontk
  # The comparison is in float64 on both sides. ``python -m bench`` has
  # imported JAX already, so the flag is set in a scope (the suites after
  # this one stay in float32), and passed to the peer's process.
  with jax.enable_x64(True):
    k = kernels()
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "kernels.npz")
      np.savez(path, **k)
      env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
                 JAX_ENABLE_X64="1")
      subprocess.run([nt_python, "-m", "bench.predict_parity", "--peer",
                      path], check=True, cwd=REPO, env=env)
      nt_values = dict(np.load(path + ".nt.npz"))
      with open(path + ".nt.json") as fh:
        nt_meta = json.load(fh)
    ours = run_all(autontk.predict, autontk.empirical_kernel_fn, k)
  rows = []
  for name, r in ours.items():
    diff = max(float(np.abs(v - nt_values[f"{name}|{i}"]).max() /
                     max(np.abs(nt_values[f"{name}|{i}"]).max(), 1e-300))
               for i, v in enumerate(r["values"]))
    rows.append({"prediction": name, "max_relative_difference": diff,
                 "autontk_s": r["seconds"],
                 "neural_tangents_s": nt_meta["seconds"][name]})
  return {"cpus": os.cpu_count(), "load_average": os.getloadavg()[0],
          "dtype": "float64", "shapes": {"N": N, "N_test": N_TEST, "O": O,
                                         "width": WIDTH},
          "versions": {"autontk": {"jax": jax.__version__,
                                   "autontk": autontk.__version__},
                       "neural_tangents": nt_meta["versions"]},
          "rows": rows}


def markdown(record: dict[str, Any]) -> str:
  """The suite's table."""
  v = record["versions"]
  lines = [f"# autontk.predict vs neural-tangents {v['neural_tangents']['neural_tangents']}",
           "", f"Same kernels (an MLP, N={record['shapes']['N']}, "
           f"N_test={record['shapes']['N_test']}, O={record['shapes']['O']}), "
           f"{record['dtype']}, {record['cpus']} CPUs; autontk on jax "
           f"{v['autontk']['jax']}, neural-tangents on jax "
           f"{v['neural_tangents']['jax']}. Times: the best of 3 to 9 runs "
           f"after a warm-up, on a shared machine (load average "
           f"{record['load_average']:.1f}): indicative only.",
           "", "| prediction | max relative difference | autontk (s) | "
           "neural-tangents (s) |", "|---|---|---|---|"]
  for r in record["rows"]:
    lines.append(f"| {r['prediction']} | {r['max_relative_difference']:.1e} "
                 f"| {r['autontk_s']:.4f} | {r['neural_tangents_s']:.4f} |")
  lines += ["", "Finite times of a dense kernel cost one `jnp.linalg.eigh` in "
            "both libraries; the gaps on the untraced (1280 × 1280) kernel "
            "are that call's CPU time on the two JAX versions. "
            "`max_learning_rate` takes all eigenvalues with NumPy where "
            "neural-tangents asks SciPy for the top one."]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  if len(sys.argv) != 3 or sys.argv[1] != "--peer":
    sys.exit("usage (in neural-tangents' environment): python -m "
             "bench.predict_parity --peer KERNELS.npz; the suite itself is "
             "python -m bench --only predict_parity")
  os.environ["JAX_ENABLE_X64"] = "1"
  peer(sys.argv[2])
