"""A bundled suite of small models, for ``autontk tune --suite``.

Tuning the suite on a new accelerator fills the plan cache with measured
timings of every method and chunking on varied models (MLPs, CNNs with and
without pooling, attention, a scanned RNN, large outputs, per-example
kernels); :mod:`autontk.costmodel.calibration` then learns that device's
timing from them.

Each entry is a *model factory*, the same contract as ``autontk tune
MODULE:FACTORY`` (so ``autontk tune autontk.suite:mlp_tanh`` works too): a
function taking optional keyword arguments (here ``n``, the batch size, and
``width``) and returning a dict with

* ``"f"``: the network ``f(params, x, **kwargs)``;
* ``"params"``: its parameters;
* ``"x1"``: example inputs, batch axis first; optional ``"x2"`` (default
  ``None``, i.e. ``x2 = x1``) and ``"kwargs"`` (keyword arguments of ``f``);
* optional NTK options ``"trace_axes"``, ``"diagonal_axes"``,
  ``"vmap_axes"`` (defaults as in :func:`autontk.ntk_fn`).

Pure JAX, no layer library, so it runs wherever autontk does.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Factory = Callable[..., dict[str, Any]]


def _dense(key, n_in: int, n_out: int) -> dict[str, jax.Array]:
  return {"w": jax.random.normal(key, (n_in, n_out)) / jnp.sqrt(n_in),
          "b": jnp.zeros((n_out,))}


def _mlp(sizes, activation, n: int, seed: int = 0, **options):
  keys = jax.random.split(jax.random.key(seed), len(sizes))
  params = [_dense(k, a, b) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]

  def f(p, x):
    for layer in p[:-1]:
      x = activation(x @ layer["w"] + layer["b"])
    return x @ p[-1]["w"] + p[-1]["b"]

  x = jax.random.normal(keys[-1], (n, sizes[0]))
  return {"f": f, "params": params, "x1": x, "vmap_axes": 0, **options}


def mlp_tanh(n: int = 16, width: int = 256) -> dict[str, Any]:
  """MLP 32-width-width-10, tanh, trace over logits."""
  return _mlp([32, width, width, 10], jnp.tanh, n)


def mlp_erf_scalar(n: int = 32, width: int = 256) -> dict[str, Any]:
  """MLP 32-width-width-1 with erf: one output, cheap forward pass."""
  return _mlp([32, width, width, 1], jax.scipy.special.erf, n)


def mlp_full_outputs(n: int = 8, width: int = 128) -> dict[str, Any]:
  """MLP 64-width-100 keeping the full 100×100 output block."""
  return _mlp([64, width, 100], jax.nn.relu, n, trace_axes=())


def mlp_large_output(n: int = 4, width: int = 128) -> dict[str, Any]:
  """MLP 32-width-1000: a large output, traced."""
  return _mlp([32, width, 1000], jnp.tanh, n)


def mlp_per_example(n: int = 32, width: int = 128) -> dict[str, Any]:
  """Per-example kernels Θ(x_i, x_i): ``diagonal_axes=(0,)``."""
  return _mlp([16, width, width, 10], jax.nn.gelu, n, diagonal_axes=(0,))


def _conv_params(key, channels, n_out, pooled: bool, hw: int):
  keys = jax.random.split(key, len(channels))
  convs = [{"w": jax.random.normal(k, (3, 3, a, b)) / jnp.sqrt(9 * a)}
           for k, a, b in zip(keys, channels[:-1], channels[1:])]
  n_in = channels[-1] if pooled else channels[-1] * hw * hw
  return {"convs": convs, "head": _dense(keys[-1], n_in, n_out)}


def _conv(x, w):
  return jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def cnn_flatten(n: int = 8, width: int = 16) -> dict[str, Any]:
  """Two 3×3 convolutions on 8×8×3, flatten, 10 outputs (full block)."""
  hw = 8
  params = _conv_params(jax.random.key(1), [3, width, width], 10, False, hw)

  def f(p, x):
    for c in p["convs"]:
      x = jax.nn.relu(_conv(x, c["w"]))
    x = x.reshape(x.shape[0], -1)
    return x @ p["head"]["w"] + p["head"]["b"]

  x = jax.random.normal(jax.random.key(2), (n, hw, hw, 3))
  return {"f": f, "params": params, "x1": x, "vmap_axes": 0,
          "trace_axes": ()}


def cnn_pooled(n: int = 8, width: int = 32) -> dict[str, Any]:
  """Two 3×3 convolutions, global average pooling, one output."""
  hw = 8
  params = _conv_params(jax.random.key(3), [3, width, width], 1, True, hw)

  def f(p, x):
    for c in p["convs"]:
      x = jax.nn.relu(_conv(x, c["w"]))
    x = x.mean(axis=(1, 2))
    return x @ p["head"]["w"] + p["head"]["b"]

  x = jax.random.normal(jax.random.key(4), (n, hw, hw, 3))
  return {"f": f, "params": params, "x1": x, "vmap_axes": 0}


def attention(n: int = 8, width: int = 32) -> dict[str, Any]:
  """One self-attention layer on 8 tokens, mean-pooled, 4 outputs."""
  d, t = width, 8
  k = jax.random.split(jax.random.key(5), 5)
  params = {"q": jax.random.normal(k[0], (d, d)) / jnp.sqrt(d),
            "k": jax.random.normal(k[1], (d, d)) / jnp.sqrt(d),
            "v": jax.random.normal(k[2], (d, d)) / jnp.sqrt(d),
            "head": _dense(k[3], d, 4)}

  def f(p, x):
    q, kk, v = x @ p["q"], x @ p["k"], x @ p["v"]
    a = jax.nn.softmax(q @ jnp.swapaxes(kk, -1, -2) / jnp.sqrt(d), axis=-1)
    h = (a @ v + x).mean(axis=-2)
    return h @ p["head"]["w"] + p["head"]["b"]

  x = jax.random.normal(k[4], (n, t, d))
  return {"f": f, "params": params, "x1": x, "vmap_axes": 0}


def rnn_scan(n: int = 8, width: int = 32) -> dict[str, Any]:
  """A tanh RNN over 8 steps with ``lax.scan``, 3 outputs."""
  k = jax.random.split(jax.random.key(6), 4)
  d_in = 8
  params = {"wx": jax.random.normal(k[0], (d_in, width)) / jnp.sqrt(d_in),
            "wh": jax.random.normal(k[1], (width, width)) / jnp.sqrt(width),
            "head": _dense(k[2], width, 3)}

  def f(p, x):
    def step(h, xt):
      h = jnp.tanh(xt @ p["wx"] + h @ p["wh"])
      return h, None

    h0 = jnp.zeros((x.shape[0], width), x.dtype)
    h, _ = jax.lax.scan(step, h0, jnp.swapaxes(x, 0, 1))
    return h @ p["head"]["w"] + p["head"]["b"]

  x = jax.random.normal(k[3], (n, 8, d_in))
  return {"f": f, "params": params, "x1": x, "vmap_axes": 0}


def resnet_mlp(n: int = 16, width: int = 128) -> dict[str, Any]:
  """Residual MLP blocks with layer norm, 10 outputs, x1 ≠ x2."""
  k = jax.random.split(jax.random.key(7), 6)
  params = {"inp": _dense(k[0], 24, width),
            "blocks": [_dense(kk, width, width) for kk in k[1:4]],
            "head": _dense(k[4], width, 10)}

  def f(p, x):
    h = x @ p["inp"]["w"] + p["inp"]["b"]
    for b in p["blocks"]:
      z = (h - h.mean(-1, keepdims=True)) / (h.std(-1, keepdims=True) + 1e-5)
      h = h + jax.nn.relu(z @ b["w"] + b["b"])
    return h @ p["head"]["w"] + p["head"]["b"]

  x1 = jax.random.normal(k[5], (n, 24))
  x2 = jax.random.normal(k[5], (max(n // 2, 1), 24))
  return {"f": f, "params": params, "x1": x1, "x2": x2, "vmap_axes": 0}


SUITE: dict[str, Factory] = {
    fn.__name__: fn for fn in (
        mlp_tanh, mlp_erf_scalar, mlp_full_outputs, mlp_large_output,
        mlp_per_example, cnn_flatten, cnn_pooled, attention, rnn_scan,
        resnet_mlp)
}
"""The bundled models by name, in the order ``tune --suite`` runs them."""
