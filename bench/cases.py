"""Benchmark cases: a model spec, an input shape, batch sizes and axes.

A :class:`Case` is plain data (JSON round-trips it) so peers in other
virtual environments receive exactly the same case. Each suite has a quick
list (this 2-core machine, minutes) and a full list (a bigger machine or GPU).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from bench.zoo import specs


@dataclasses.dataclass(frozen=True)
class Case:
  """One NTK evaluation to benchmark.

  Attributes:
    name: unique id, used in file names and tables.
    family: model family (fcn, cnn, resnet, transformer, mixer, rnn).
    spec: the model's layer specs (see :mod:`bench.zoo.specs`).
    in_shape: shape of one input example.
    n1, n2: batch sizes of x1 and x2 (x2 is a different batch).
    trace: ``trace_axes=(-1,)`` (trace over logits) if True, else the full
      ``O x O`` block (``trace_axes=()``).
    seed: parameter and input seed.
    note: free text for tables (e.g. which reference-table row this is).
  """

  name: str
  family: str
  spec: Any
  in_shape: tuple
  n1: int
  n2: int
  trace: bool
  seed: int = 0
  note: str = ""

  @property
  def trace_axes(self) -> tuple:
    return (-1,) if self.trace else ()

  @property
  def out_dim(self) -> int:
    return int(specs.out_shape(self.spec, self.in_shape)[-1])

  @property
  def n_params(self) -> int:
    return specs.n_params(self.spec, self.in_shape)

  @property
  def kernel_entries(self) -> int:
    o = 1 if self.trace else self.out_dim ** 2
    return self.n1 * self.n2 * o

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["in_shape"] = list(self.in_shape)
    return d

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "Case":
    d = dict(d)
    d["in_shape"] = tuple(d["in_shape"])
    return cls(**d)

  def arrays(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """``(params, x1, x2)`` as NumPy float32, the same for every peer."""
    params = specs.init_params(self.spec, self.in_shape, self.seed)
    x1 = specs.init_inputs(self.in_shape, self.n1, 2 * self.seed)
    x2 = specs.init_inputs(self.in_shape, self.n2, 2 * self.seed + 1)
    return params, x1, x2

  def save(self, directory: str) -> str:
    """Writes ``params``/``x1``/``x2`` to ``<directory>/<name>.npz``."""
    params, x1, x2 = self.arrays()
    path = os.path.join(directory, f"{self.name}.npz")
    np.savez(path, x1=x1, x2=x2, **{"p:" + k: v for k, v in params.items()})
    return path


def load_arrays(path: str):
  """Inverse of :meth:`Case.save`: ``(params, x1, x2)``."""
  z = np.load(path)
  params = {k[2:]: z[k] for k in z.files if k.startswith("p:")}
  return params, z["x1"], z["x2"]


def dump(cases: list[Case], path: str) -> None:
  with open(path, "w") as fh:
    json.dump([c.to_json() for c in cases], fh)


def load(path: str) -> list[Case]:
  with open(path) as fh:
    return [Case.from_json(d) for d in json.load(fh)]


# The reference table of docs/performance.md, plus a ResNet and a transformer block.

def reference(quick: bool) -> list[Case]:
  fcn_big = specs.fcn([784, 1024, 1024, 10], "relu")
  cases = [
      Case("fcn784_full", "fcn", fcn_big, (784,), 16, 16, False,
           note="FCN 784-1024-1024-10, N=16x16, full OxO"),
      Case("fcn784_trace", "fcn", fcn_big, (784,), 16, 16, True,
           note="same, trace over outputs"),
      Case("fcn32_erf", "fcn", specs.fcn([32, 256, 256, 1], "erf"), (32,),
           64, 64, True, note="FCN 32-256-256-1 (erf), N=64x64"),
      Case("cnn32_flatten", "cnn", specs.cnn([32, 32], 10, "flatten"),
           (16, 16, 3), 8, 8, False,
           note="CNN 2xconv32 3x3 on 16x16x3, flatten, O=10 full, N=8x8"),
      Case("cnn64_gap", "cnn", specs.cnn([64, 64], 1, "gap"), (16, 16, 3),
           8, 8, True, note="CNN 2xconv64, global avg pool, O=1, N=8x8"),
      Case("fcn64_o100", "fcn", specs.fcn([64, 128, 100], "relu"), (64,),
           8, 8, False, note="FCN 64-128-100, N=8x8, full OxO"),
  ]
  if quick:
    cases += [
        Case("resnet_small", "resnet", specs.resnet(16, [1, 1], 10),
             (16, 16, 3), 4, 4, True,
             note="ResNet 2 stages x 1 block, width 16, 16x16x3, O=10 trace"),
        Case("vit_block", "transformer",
             specs.transformer(64, 4, 128, 1, 10, patch=4), (16, 16, 3),
             4, 4, True, note="ViT block d=64 4 heads on 16x16x3/4, O=10"),
    ]
  else:
    cases += [
        Case("resnet18_32", "resnet", specs.resnet(64, [2, 2, 2, 2], 10),
             (32, 32, 3), 8, 8, True,
             note="ResNet-18-style (4 stages x 2 blocks, width 64), 32x32x3"),
        Case("vit_block", "transformer",
             specs.transformer(128, 4, 256, 2, 10, patch=4), (32, 32, 3),
             8, 8, True, note="ViT 2 blocks d=128 4 heads, 32x32x3/4, O=10"),
    ]
  return cases


def scaling(quick: bool) -> list[Case]:
  """MLPs 16-W-W-O: FLOPs per NTK entry vs width W and vs output size O."""
  widths = [32, 64, 128, 256, 512, 1024] if quick else [
      32, 64, 128, 256, 512, 1024, 2048, 4096]
  outs = [1, 4, 16, 64] if quick else [1, 4, 16, 64, 256]
  # N*O large against W, so the N^2 O^2 terms the paper's table is about
  # dominate the per-example passes, as in the paper's FCN plots.
  n = 32 if quick else 64
  cases = [Case(f"mlp_w{w}_o10", "fcn", specs.fcn([16, w, w, 10], "relu"),
                (16,), n, n, False, note=f"width sweep W={w} O=10")
           for w in widths]
  cases += [Case(f"mlp_w128_o{o}", "fcn", specs.fcn([16, 128, 128, o], "relu"),
                 (16,), n, n, False, note=f"output sweep W=128 O={o}")
            for o in outs if o != 10]
  return cases


def regret(quick: bool) -> list[Case]:
  """>= 12 models x shapes for auto's regret."""
  s = 1 if quick else 2
  big_n = 64 if quick else 256
  return [
      Case("r_mlp_w64_o1_n32", "fcn", specs.fcn([16, 64, 64, 1], "relu"),
           (16,), 32 * s, 32 * s, True),
      Case("r_mlp_w512_o10_full", "fcn",
           specs.fcn([32, 512, 512, 10], "tanh"), (32,), 8, 8, False),
      Case("r_mlp_w256_o100_full", "fcn",
           specs.fcn([32, 256, 100], "relu"), (32,), 4, 4, False),
      Case("r_mlp_w32_o1000_trace", "fcn",
           specs.fcn([16, 32, 1000], "relu"), (16,), 2 * s, 2 * s, True),
      Case("r_mlp_w1024_o10_n1", "fcn",
           specs.fcn([64, 1024, 1024, 10], "relu"), (64,), 1, 1, False),
      Case(f"r_mlp_erf_n{big_n}", "fcn", specs.fcn([8, 128, 128, 1], "erf"),
           (8,), big_n, big_n, True),
      Case("r_cnn_flatten_o10", "cnn", specs.cnn([16, 16], 10, "flatten"),
           (8, 8, 3), 8, 8, True),
      Case("r_cnn_gap_o1", "cnn", specs.cnn([32, 32], 1, "gap"), (8, 8, 3),
           8 * s, 8 * s, True),
      Case("r_cnn_gap_o100_full", "cnn", specs.cnn([16, 16], 100, "gap"),
           (8, 8, 3), 2, 2, False),
      Case("r_resnet_o10", "resnet", specs.resnet(8, [1, 1], 10),
           (8, 8, 3), 4, 4, True),
      Case("r_vit_o10_full", "transformer",
           specs.transformer(32, 2, 64, 1, 10, patch=2), (8, 8, 3), 4, 4,
           False),
      Case("r_mixer_o10", "mixer", specs.mixer(32, 16, 32, 64, 1, 10, patch=2),
           (8, 8, 3), 4, 4, True),
      Case("r_rnn_o10", "rnn", specs.rnn(32, 10), (8, 16), 8, 8, True),
      Case("r_attn_o1_n16", "transformer",
           specs.transformer(16, 2, 32, 1, 1), (8, 16), 16, 16, True),
  ]


def memory(quick: bool) -> list[Case]:
  """ResNet / ViT / Mixer at several O, for time and peak memory."""
  outs = [10, 100] if quick else [1, 10, 100, 1000]
  if quick:
    archs = [
        ("resnet", specs.resnet(8, [1, 1], 0), (16, 16, 3), 4),
        ("vit", None, (16, 16, 3), 4),
        ("mixer", None, (16, 16, 3), 4),
    ]
  else:
    archs = [
        ("resnet", specs.resnet(64, [2, 2, 2, 2], 0), (32, 32, 3), 8),
        ("vit", None, (32, 32, 3), 8),
        ("mixer", None, (32, 32, 3), 8),
    ]
  cases = []
  for family, _, in_shape, n in archs:
    for o in outs:
      if family == "resnet":
        spec = (specs.resnet(8, [1, 1], o) if quick
                else specs.resnet(64, [2, 2, 2, 2], o))
      elif family == "vit":
        spec = (specs.transformer(32, 2, 64, 1, o, patch=4) if quick
                else specs.transformer(128, 4, 256, 2, o, patch=4))
      else:
        tokens = (in_shape[0] // 4) ** 2
        spec = (specs.mixer(32, tokens, 32, 64, 1, o, patch=4) if quick
                else specs.mixer(128, tokens, 64, 256, 2, o, patch=4))
      cases.append(Case(f"m_{family}_o{o}", family, spec, in_shape, n, n,
                        False, note=f"{family} O={o} full OxO"))
  if quick:  # the compile-heavy mixer only at the large O
    cases = [c for c in cases if c.name != "m_mixer_o10"]
  return cases


def plancache(quick: bool) -> list[Case]:
  """Small models whose plans are cached, then hit by a new process."""
  return [
      Case("pc_mlp", "fcn", specs.fcn([32, 256, 256, 10], "relu"), (32,), 8, 8,
           True),
      Case("pc_cnn", "cnn", specs.cnn([16, 16], 10, "gap"), (8, 8, 3), 4, 4,
           False),
  ]
