"""torch.func peer: the two recipes of PyTorch's NTK tutorial, on the CPU.

Runs inside ``.venv-bench-torch`` (torch 2.13.0 CPU, created by
:mod:`bench.peers.envs`):

  .venv-bench-torch/bin/python -m bench.peers.torch_runner JOB.json

The job file is the one :mod:`bench.peers.nt_runner` reads. The models are
rebuilt from the same layer specs (NHWC layout kept throughout so flatten
orders match JAX) and the same ``.npz`` parameters. Two methods:

* ``torch_jc``: ``vmap(jacrev(f))`` per example, then ``einsum`` per
  parameter ("Jacobian contraction" in the tutorial);
* ``torch_ntvp``: ``vmap`` over a basis of ``vjp`` then ``jvp`` ("NTK-vector
  products" in the tutorial).

Trace kernels are divided by the output size, as neural-tangents does (the
tutorial's ``trace`` does not divide). Eager mode: the first call has no
compile step, so ``first_call_s`` is one warm-up call. ``"torch_device":
"cuda"`` in the job runs on the GPU (``bench/gpu.sh``).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
import traceback

import numpy as np

from bench import cases as cases_mod


def _same_pad(size: int, k: int, s: int) -> tuple[int, int]:
  out = -(-size // s)
  total = max((out - 1) * s + k - size, 0)
  return total // 2, total - total // 2


def build(spec):
  import torch
  import torch.nn.functional as F

  def act(name, x):
    if name == "relu":
      return torch.relu(x)
    if name == "erf":
      return torch.erf(x)
    if name == "tanh":
      return torch.tanh(x)
    if name == "gelu":
      return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2 / math.pi)
                                         * (x + 0.044715 * x ** 3)))
    raise ValueError(name)

  def run(layers, p, x, prefix):
    for i, layer in enumerate(layers):
      kind, name = layer[0], f"{prefix}{i}"
      if kind == "dense":
        x = x @ p[name + ".w"] + p[name + ".b"]
      elif kind == "conv":
        _, k, s, pad = layer[1:]
        y = x.permute(0, 3, 1, 2)
        if pad == "SAME":
          top, bottom = _same_pad(y.shape[2], k, s)
          left, right = _same_pad(y.shape[3], k, s)
          y = F.pad(y, (left, right, top, bottom))
        w = p[name + ".w"].permute(3, 2, 0, 1)
        y = F.conv2d(y, w, stride=s)
        x = y.permute(0, 2, 3, 1) + p[name + ".b"]
      elif kind == "act":
        x = act(layer[1], x)
      elif kind == "flatten":
        x = x.reshape(x.shape[0], -1)
      elif kind == "gap":
        x = x.mean(dim=(1, 2))
      elif kind == "mean_tokens":
        x = x.mean(dim=1)
      elif kind == "swap":
        x = x.transpose(1, 2)
      elif kind == "layernorm":
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + 1e-5) * p[name + ".g"] + p[
            name + ".b"]
      elif kind == "attention":
        heads = layer[1]
        n, t, d = x.shape
        dh = d // heads
        q, k_, v = (
            (x @ p[name + "." + s]).reshape(n, t, heads, dh) for s in "qkv")
        logits = torch.einsum("nthd,nshd->nhts", q, k_) / math.sqrt(dh)
        w = torch.softmax(logits, dim=-1)
        x = torch.einsum("nhts,nshd->nthd", w, v).reshape(n, t, d)
        x = x @ p[name + ".o"]
      elif kind == "rnn":
        wx, wh, b = p[name + ".wx"], p[name + ".wh"], p[name + ".b"]
        h = torch.zeros(x.shape[0], wh.shape[0], dtype=x.dtype,
                        device=x.device)
        for t in range(x.shape[1]):
          h = torch.tanh(x[:, t] @ wx + h @ wh + b)
        x = h
      elif kind == "patchify":
        pz = layer[1]
        n, hh, ww, c = x.shape
        x = x.reshape(n, hh // pz, pz, ww // pz, pz, c).permute(
            0, 1, 3, 2, 4, 5).reshape(n, (hh // pz) * (ww // pz), pz * pz * c)
      elif kind == "residual":
        x = x + run(layer[1], p, x, name + ".")
      else:
        raise ValueError(kind)
    return x

  def f(params, x):
    return run(spec, params, x, "l")

  return f


def kernel_fns(spec, trace: bool, out_dim: int):
  import torch
  from torch.func import jacrev, jvp, vjp, vmap

  f = build(spec)

  def f_single(params, x):
    return f(params, x.unsqueeze(0)).squeeze(0)

  def jc(params, x1, x2):
    j1 = vmap(jacrev(f_single), (None, 0))(params, x1)
    j2 = vmap(jacrev(f_single), (None, 0))(params, x2)
    expr = "Naf,Maf->NM" if trace else "Naf,Mbf->NMab"
    result = sum(torch.einsum(expr, a.flatten(2), b.flatten(2))
                 for a, b in zip(j1.values(), j2.values()))
    return result / out_dim if trace else result

  def ntvp(params, x1, x2):
    def get_ntk(a, b):
      def f1(p):
        return f_single(p, a)

      def f2(p):
        return f_single(p, b)

      out, vjp_fn = vjp(f1, params)

      def column(vec):
        cot = vjp_fn(vec)
        _, t = jvp(f2, (params,), cot)
        return t

      basis = torch.eye(out.numel(), dtype=out.dtype,
                        device=out.device).view(out.numel(), -1)
      return vmap(column)(basis)

    result = vmap(vmap(get_ntk, (None, 0)), (0, None))(x1, x2)
    if trace:
      return torch.einsum("NMKK->NM", result) / out_dim
    return result

  return {"torch_jc": jc, "torch_ntvp": ntvp}


def _time(call, policy, sync=lambda: None) -> dict:
  t0 = time.perf_counter()
  result = call()
  sync()
  first = time.perf_counter() - t0
  times, total = [], 0.0
  while len(times) < policy["max_repeats"]:
    t0 = time.perf_counter()
    call()
    sync()
    dt = time.perf_counter() - t0
    times.append(dt)
    total += dt
    if len(times) >= policy["min_repeats"] and total >= policy["min_total_s"]:
      break
    if total >= policy["max_total_s"]:
      break
  return {"first_call_s": first, "median_s": statistics.median(times),
          "min_s": min(times), "repeats": len(times), "_result": result}


def main(job_path: str) -> None:
  import torch

  with open(job_path) as fh:
    job = json.load(fh)
  policy = job["policy"]
  work = job["dir"]
  # "cuda" on a GPU machine whose torch has CUDA (bench/gpu.sh); else CPU.
  device = job.get("torch_device") or "cpu"
  if device == "cuda" and not torch.cuda.is_available():
    device = "cpu"
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  results = {"versions": {"torch": torch.__version__, "device": device,
                          "threads": torch.get_num_threads()},
             "cases": {}}
  torch.set_grad_enabled(False)
  for cd in job["cases"]:
    case = cases_mod.Case.from_json(cd)
    params, x1, x2 = cases_mod.load_arrays(os.path.join(work,
                                                        case.name + ".npz"))
    params = {k: torch.from_numpy(v).to(device) for k, v in params.items()}
    x1, x2 = torch.from_numpy(x1).to(device), torch.from_numpy(x2).to(device)
    recs, kernels = {}, {}
    skip = job.get("skip", {}).get(case.name, [])
    for key, fn in kernel_fns(case.spec, case.trace, case.out_dim).items():
      if key in skip:
        recs[key] = {"skipped_slow": True}
        print(f"  torch {key} {case.name}: not run (too slow for this mode)",
              flush=True)
        continue
      try:
        rec = _time(lambda: fn(params, x1, x2), policy, sync)
        kernels[key] = rec.pop("_result").double().cpu().numpy()
      except Exception as e:  # noqa: BLE001 - a failing recipe is a result
        rec = {"error": f"{type(e).__name__}: {e}"[:400]}
        traceback.print_exc()
      recs[key] = rec
      print(f"  torch {key} {case.name}: " + (
          f"{rec['median_s'] * 1e3:.2f} ms" if "median_s" in rec
          else rec["error"][:100]), flush=True)
    results["cases"][case.name] = recs
    np.savez(os.path.join(work, f"torch_{case.name}.npz"), **kernels)
    with open(os.path.join(work, "torch_results.json"), "w") as fh:
      json.dump(results, fh, indent=1)


if __name__ == "__main__":
  main(sys.argv[1])
