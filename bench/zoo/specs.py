"""Portable layer specs with a plain-JAX apply (part of the model zoo).

A model is a JSON-able list of layer specs (see :data:`LAYERS`). The same
spec and the same parameter values (a flat ``{name: array}`` dict saved as
``.npz``) are rebuilt by every peer: this module's :func:`apply` for autontk,
for plain JAX and for neural-tangents (which takes any JAX function, so it
runs this very code under jax 0.4.23), and ``bench/peers/torch_runner.py``
for torch.func. So all peers compute the same kernel, and the bench checks
that they do.

This module must import under jax 0.4.23 as well as current JAX (it uses
only ``jax.numpy`` and ``jax.lax`` functions present in both, and nothing of
autontk), and without JAX at all in the torch peer's environment, which
uses only the specs and the parameter initialisation.

Layer specs (inputs are NHWC images or NTD token sequences):

  ["dense", out]                 y = x @ w + b on the last axis
  ["conv", out, k, stride, pad]  NHWC / HWIO convolution, pad "SAME"/"VALID"
  ["act", name]                  relu | erf | tanh | gelu (tanh approximation)
  ["flatten"]                    (N, ...) -> (N, -1)
  ["gap"]                        mean over the spatial axes (1, 2)
  ["mean_tokens"]                mean over axis 1
  ["swap"]                       swap axes 1 and 2 (token mixing in a Mixer)
  ["layernorm"]                  LayerNorm over the last axis, scale and bias
  ["attention", heads]           multi-head self-attention over axis 1
  ["rnn", hidden]                tanh RNN over axis 1 with ``lax.scan``,
                                 returns the last hidden state
  ["patchify", p]                (N, H, W, C) -> (N, H/p * W/p, p*p*C)
  ["residual", [specs...]]       x + block(x)

>>> spec = fcn([4, 8, 2], "relu")
>>> params = init_params(spec, (4,), seed=0)
>>> apply(spec)(params, np.ones((3, 4), np.float32)).shape
(3, 2)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

try:
  import jax
  import jax.numpy as jnp
  from jax import lax
except ImportError:  # the torch peer's environment: specs and params only
  jax = jnp = lax = None

Spec = list

LAYERS = ("dense", "conv", "act", "flatten", "gap", "mean_tokens", "swap",
          "layernorm", "attention", "rnn", "patchify", "residual")


# Architectures ---------------------------------------------------------------


def fcn(widths: Sequence[int], act: str = "relu") -> Spec:
  """Fully connected net ``widths[0] -> ... -> widths[-1]``."""
  spec: Spec = []
  for i, w in enumerate(widths[1:]):
    spec.append(["dense", int(w)])
    if i < len(widths) - 2:
      spec.append(["act", act])
  return spec


def cnn(channels: Sequence[int], out: int, pool: str = "flatten",
        act: str = "relu", k: int = 3) -> Spec:
  """Convolutions (SAME, stride 1), then flatten or global average pool."""
  spec: Spec = []
  for c in channels:
    spec += [["conv", int(c), k, 1, "SAME"], ["act", act]]
  spec.append(["flatten"] if pool == "flatten" else ["gap"])
  spec.append(["dense", int(out)])
  return spec


def resnet(width: int, blocks: Sequence[int], out: int) -> Spec:
  """A small pre-activation ResNet: stem, stages of basic blocks, GAP, dense.

  ``blocks[i]`` basic blocks per stage; stage i has ``width * 2**i``
  channels and starts with a strided 3x3 convolution (no projection needed
  since the block input already has the stage's width).
  """
  spec: Spec = [["conv", width, 3, 1, "SAME"]]
  for s, n in enumerate(blocks):
    c = width * 2 ** s
    if s > 0:
      spec.append(["conv", c, 3, 2, "SAME"])
    for _ in range(n):
      spec.append(["residual", [["act", "relu"], ["conv", c, 3, 1, "SAME"],
                                ["act", "relu"], ["conv", c, 3, 1, "SAME"]]])
  spec += [["act", "relu"], ["gap"], ["dense", int(out)]]
  return spec


def transformer(dim: int, heads: int, mlp: int, depth: int, out: int,
                patch: int | None = None) -> Spec:
  """ViT-style pre-LN transformer blocks; tokens mean-pooled, then dense."""
  spec: Spec = []
  if patch:
    spec.append(["patchify", patch])
  spec.append(["dense", dim])
  for _ in range(depth):
    spec.append(["residual", [["layernorm"], ["attention", heads]]])
    spec.append(["residual", [["layernorm"], ["dense", mlp], ["act", "gelu"],
                              ["dense", dim]]])
  spec += [["layernorm"], ["mean_tokens"], ["dense", int(out)]]
  return spec


def mixer(dim: int, tokens: int, token_mlp: int, channel_mlp: int, depth: int,
          out: int, patch: int | None = None) -> Spec:
  """MLP-Mixer blocks: token mixing (dense over axis 1) and channel mixing."""
  spec: Spec = []
  if patch:
    spec.append(["patchify", patch])
  spec.append(["dense", dim])
  for _ in range(depth):
    spec.append(["residual", [["layernorm"], ["swap"], ["dense", token_mlp],
                              ["act", "gelu"], ["dense", tokens], ["swap"]]])
    spec.append(["residual", [["layernorm"], ["dense", channel_mlp],
                              ["act", "gelu"], ["dense", dim]]])
  spec += [["layernorm"], ["mean_tokens"], ["dense", int(out)]]
  return spec


def rnn(hidden: int, out: int) -> Spec:
  """A tanh RNN over the token axis (``lax.scan``), then a dense readout."""
  return [["rnn", hidden], ["dense", int(out)]]


# Parameters ------------------------------------------------------------------


def _walk(spec: Spec, shape: tuple[int, ...], prefix: str,
          out: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
  """Records parameter shapes; returns the output shape (without batch)."""
  for i, layer in enumerate(spec):
    kind, name = layer[0], f"{prefix}{i}"
    if kind == "dense":
      out[name + ".w"] = (shape[-1], layer[1])
      out[name + ".b"] = (layer[1],)
      shape = shape[:-1] + (layer[1],)
    elif kind == "conv":
      c, k, s, pad = layer[1:]
      out[name + ".w"] = (k, k, shape[-1], c)
      out[name + ".b"] = (c,)
      h, w = shape[0], shape[1]
      if pad == "SAME":
        h, w = -(-h // s), -(-w // s)
      else:
        h, w = (h - k) // s + 1, (w - k) // s + 1
      shape = (h, w, c)
    elif kind in ("act",):
      pass
    elif kind == "flatten":
      shape = (int(np.prod(shape)),)
    elif kind == "gap":
      shape = (shape[-1],)
    elif kind == "mean_tokens":
      shape = shape[1:]
    elif kind == "swap":
      shape = (shape[1], shape[0]) + shape[2:]
    elif kind == "layernorm":
      out[name + ".g"] = (shape[-1],)
      out[name + ".b"] = (shape[-1],)
    elif kind == "attention":
      d = shape[-1]
      for p in ("q", "k", "v", "o"):
        out[name + "." + p] = (d, d)
    elif kind == "rnn":
      hdim = layer[1]
      out[name + ".wx"] = (shape[-1], hdim)
      out[name + ".wh"] = (hdim, hdim)
      out[name + ".b"] = (hdim,)
      shape = (hdim,)
    elif kind == "patchify":
      p = layer[1]
      shape = ((shape[0] // p) * (shape[1] // p), p * p * shape[2])
    elif kind == "residual":
      inner = _walk(layer[1], shape, name + ".", out)
      if inner != shape:
        raise ValueError(f"residual block {name} changes shape {shape} -> "
                         f"{inner}")
    else:
      raise ValueError(f"unknown layer {kind!r}; known: {LAYERS}")
  return shape


def param_shapes(spec: Spec, in_shape: Sequence[int]) -> dict[str, tuple]:
  """``{name: shape}`` of every parameter, in layer order."""
  shapes: dict[str, tuple] = {}
  _walk(spec, tuple(in_shape), "l", shapes)
  return shapes


def out_shape(spec: Spec, in_shape: Sequence[int]) -> tuple[int, ...]:
  """Output shape of one example."""
  return _walk(spec, tuple(in_shape), "l", {})


def n_params(spec: Spec, in_shape: Sequence[int]) -> int:
  return int(sum(np.prod(s) for s in param_shapes(spec, in_shape).values()))


def init_params(spec: Spec, in_shape: Sequence[int],
                seed: int = 0) -> dict[str, np.ndarray]:
  """Standard-parameterised float32 values, reproducible across peers."""
  rng = np.random.default_rng(seed)
  params = {}
  for name, shape in param_shapes(spec, in_shape).items():
    leaf = name.rsplit(".", 1)[1]
    if leaf == "g":
      v = 1.0 + 0.1 * rng.standard_normal(shape)
    elif len(shape) == 1:
      v = 0.1 * rng.standard_normal(shape)
    else:
      fan_in = int(np.prod(shape[:-1]))
      v = rng.standard_normal(shape) / math.sqrt(fan_in)
    params[name] = v.astype(np.float32)
  return params


def init_inputs(in_shape: Sequence[int], n: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(1000 + seed)
  return rng.standard_normal((n,) + tuple(in_shape)).astype(np.float32)


# Plain-JAX apply -------------------------------------------------------------


def _act(name: str, x):
  if name == "relu":
    return jnp.maximum(x, 0.0)
  if name == "erf":
    return lax.erf(x)
  if name == "tanh":
    return jnp.tanh(x)
  if name == "gelu":
    return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2 / math.pi)
                                     * (x + 0.044715 * x ** 3)))
  raise ValueError(f"unknown activation {name!r}")


def _layernorm(x, g, b):
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)
  return (x - mean) * lax.rsqrt(var + 1e-5) * g + b


def _attention(x, p, name, heads):
  n, t, d = x.shape
  dh = d // heads

  def split(y):
    return y.reshape(n, t, heads, dh)

  q, k, v = (split(x @ p[name + "." + s]) for s in "qkv")
  logits = jnp.einsum("nthd,nshd->nhts", q, k) / math.sqrt(dh)
  weights = jax.nn.softmax(logits, axis=-1)
  y = jnp.einsum("nhts,nshd->nthd", weights, v).reshape(n, t, d)
  return y @ p[name + ".o"]


def _rnn(x, p, name):
  wx, wh, b = p[name + ".wx"], p[name + ".wh"], p[name + ".b"]
  h0 = jnp.zeros((x.shape[0], wh.shape[0]), x.dtype)

  def step(h, xt):
    return jnp.tanh(xt @ wx + h @ wh + b), None

  h, _ = lax.scan(step, h0, jnp.swapaxes(x, 0, 1))
  return h


def _run(spec: Spec, params, x, prefix: str):
  for i, layer in enumerate(spec):
    kind, name = layer[0], f"{prefix}{i}"
    if kind == "dense":
      x = x @ params[name + ".w"] + params[name + ".b"]
    elif kind == "conv":
      _, _, s, pad = layer[1:]
      x = lax.conv_general_dilated(
          x, params[name + ".w"], (s, s), pad,
          dimension_numbers=("NHWC", "HWIO", "NHWC")) + params[name + ".b"]
    elif kind == "act":
      x = _act(layer[1], x)
    elif kind == "flatten":
      x = x.reshape(x.shape[0], -1)
    elif kind == "gap":
      x = jnp.mean(x, axis=(1, 2))
    elif kind == "mean_tokens":
      x = jnp.mean(x, axis=1)
    elif kind == "swap":
      x = jnp.swapaxes(x, 1, 2)
    elif kind == "layernorm":
      x = _layernorm(x, params[name + ".g"], params[name + ".b"])
    elif kind == "attention":
      x = _attention(x, params, name, layer[1])
    elif kind == "rnn":
      x = _rnn(x, params, name)
    elif kind == "patchify":
      p = layer[1]
      n, h, w, c = x.shape
      x = x.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
      x = x.reshape(n, (h // p) * (w // p), p * p * c)
    elif kind == "residual":
      x = x + _run(layer[1], params, x, name + ".")
    else:
      raise ValueError(f"unknown layer {kind!r}; known: {LAYERS}")
  return x


def apply(spec: Spec) -> Callable[[Any, Any], Any]:
  """``f(params, x)`` for a batch ``x`` of shape ``(N, *in_shape)``."""
  def f(params, x):
    return _run(spec, params, x, "l")
  return f


def warm_up_inputs():
  """A tiny model and batch for each runner's untimed warm-up NTK, so one-off
  process costs (imports, JAX's first traces) do not land on the first
  timed case. ``(f, params, x1, x2)`` as NumPy float32."""
  spec = fcn([4, 2], "relu")
  return (apply(spec), init_params(spec, (3,)), init_inputs((3,), 2, 0),
          init_inputs((3,), 3, 1))

