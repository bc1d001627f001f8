"""Models and reference kernels for the kernel-option tests (``wrt``,
``groups``, pseudo-NTK, adapters).

The references come from :mod:`reference` (full Jacobian of the flattened
selected leaves, NumPy contraction); which leaves a selection holds is
decided here from the leaves' paths, written out independently of
:mod:`autontk.selection`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reference import contract, jacobians


def rand(seed, shape, scale=1.0):
  return scale * jax.random.normal(jax.random.PRNGKey(seed), shape)


def path_of(keypath) -> str:
  """``a/b/0/c`` from a key path (an nnx variable's ``.value`` dropped)."""
  parts = []
  for k in keypath:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(k.name)
    else:
      parts.append(str(getattr(k, "key", k)))
  if parts and parts[-1] == "value":
    parts = parts[:-1]
  return "/".join(parts)


def paths(params) -> list[str]:
  return [path_of(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def float_leaf(v) -> bool:
  return hasattr(v, "dtype") and jnp.issubdtype(v.dtype, jnp.floating)


@dataclasses.dataclass
class KernelCase:
  """A model with a selection to check.

  Attributes:
    f, params, x1, x2, kwargs: the model (``f`` may be a model object).
    apply: ``apply(params, x, **kwargs)``, the plain function the reference
      differentiates.
    wrt: the selection as given to autontk.
    picked: the same selection, decided on the path (independently).
    n_out: the size of the logits axis (-1).
  """

  name: str
  f: Any
  apply: Callable
  params: Any
  x1: Any
  x2: Any
  wrt: Any
  picked: Callable[[str], bool]
  kwargs: dict = dataclasses.field(default_factory=dict)


def mlp_case() -> KernelCase:
  dims = (4, 6, 5, 3)
  params = [{"w": rand(10 + i, (a, b), a ** -0.5), "b": rand(20 + i, (b,), .1)}
            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))]

  def f(p, x):
    for i, layer in enumerate(p):
      x = x @ layer["w"] + layer["b"]
      if i < len(p) - 1:
        x = jnp.tanh(x)
    return x

  # A prefix mask: the last two layers.
  return KernelCase("mlp", f, f, params, rand(1, (3, 4)), rand(2, (4, 4)),
                    wrt=[False, True, True],
                    picked=lambda p: p.split("/")[0] in ("1", "2"))


def linen_case() -> KernelCase:
  nn = pytest.importorskip("flax.linen")
  import autontk

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(3, (2, 2), padding="VALID")(x)
      x = nn.BatchNorm(use_running_average=True)(x)
      x = nn.tanh(x).reshape((x.shape[0], -1))
      x = nn.tanh(nn.Dense(4)(x))
      return nn.Dense(3)(x)

  net = Net()
  x1, x2 = rand(3, (3, 4, 4, 1)), rand(4, (2, 4, 4, 1))
  variables = net.init(jax.random.PRNGKey(0), x1)
  variables = jax.tree_util.tree_map_with_path(
      lambda kp, v: jnp.abs(v) + 0.5 if "var" in str(kp) else
      v + 0.3 if "mean" in str(kp) else v, variables)
  model = autontk.adapters.linen(net, variables)
  stats = {k: v for k, v in variables.items() if k != "params"}

  def apply(p, x):
    return net.apply({"params": p, **stats}, x)

  return KernelCase("linen_bn", model, apply, model.params, x1, x2,
                    wrt=("Conv_0", "Dense_1/kernel"),
                    picked=lambda p: p.startswith("Conv_0/") or
                    p == "Dense_1/kernel")


def nnx_case() -> KernelCase:
  nnx = pytest.importorskip("flax.nnx")

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(3, 5, rngs=rngs)
      self.bn = nnx.BatchNorm(5, use_running_average=True, rngs=rngs)
      self.l2 = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x):
      return self.l2(nnx.gelu(self.bn(self.l1(x))))

  net = Net(nnx.Rngs(0))
  graphdef, params, rest = nnx.split(net, nnx.Param, ...)

  def apply(p, x):
    return nnx.merge(graphdef, p, rest)(x)

  return KernelCase("nnx", net, apply, params, rand(5, (3, 3)),
                    rand(6, (2, 3)), wrt="*/kernel",
                    picked=lambda p: p.endswith("/kernel"))


def haiku_case() -> KernelCase:
  hk = pytest.importorskip("haiku")
  import autontk

  def fwd(x, is_training=False):
    h = hk.Linear(4)(x)
    h = hk.BatchNorm(True, True, 0.9)(h, is_training=is_training)
    return hk.Linear(3)(jax.nn.softplus(h))

  t = hk.transform_with_state(fwd)
  x1, x2 = rand(7, (3, 3)), rand(8, (2, 3))
  params, state = t.init(jax.random.PRNGKey(1), x1, is_training=True)
  state = jax.tree.map(lambda v: v + 0.25, state)
  model = autontk.adapters.haiku(t, params, state)

  def apply(p, x):
    return t.apply(p, state, None, x)[0]

  # A callable: the weight matrices only.
  return KernelCase("haiku_state", model, apply, params, x1, x2,
                    wrt=lambda path, leaf: path.endswith("/w"),
                    picked=lambda p: p.endswith("/w"))


def equinox_case() -> KernelCase:
  eqx = pytest.importorskip("equinox")

  net = eqx.nn.MLP(3, 3, 5, 2, activation=jax.nn.tanh,
                   key=jax.random.PRNGKey(2))
  params, static = eqx.partition(net, eqx.is_inexact_array)

  def apply(p, x):
    return jax.vmap(eqx.combine(p, static))(x)

  # An equinox-style filter spec: a full-structure mask.
  mask = jax.tree.map(lambda _: False, params)
  mask = eqx.tree_at(lambda m: (m.layers[0].weight, m.layers[2].bias), mask,
                     replace=(True, True))
  return KernelCase("equinox", net, apply, params, rand(9, (3, 3)),
                    rand(10, (2, 3)), wrt=mask,
                    picked=lambda p: p in ("layers/0/weight",
                                           "layers/2/bias"))


CASES = {c.__name__[:-5]: c for c in (mlp_case, linen_case, nnx_case,
                                       haiku_case, equinox_case)}


def layer_of(path: str) -> str:
  """What ``groups="layer"`` means: the path without its last key."""
  return path.rpartition("/")[0] or path


def reference_kernels(apply, params, x1, x2, picks, trace_axes=(-1,),
                      diagonal_axes=(), kwargs=None, kwargs2=None):
  """For each list of leaf indices in ``picks``, the reference kernel with
  respect to those leaves (every other leaf fixed), as a pytree of float64
  arrays. ``kwargs`` go to f on x1, ``kwargs2`` (default the same) on x2."""
  kwargs = kwargs or {}
  kwargs2 = kwargs if kwargs2 is None else kwargs2
  leaves, td = jax.tree.flatten(params)
  union = sorted(set().union(*map(set, picks)))

  def g(sub, x, **kw):
    full = dict(zip(union, sub))
    return apply(jax.tree.unflatten(
        td, [full.get(i, v) for i, v in enumerate(leaves)]), x, **kw)

  sub = [leaves[i] for i in union]
  j1 = jacobians(g, sub, x1, kwargs, jit=True)
  j2 = j1 if x2 is None else jacobians(g, sub, x2, kwargs2, jit=True)
  sizes = [math.prod(np.shape(leaves[i])) for i in union]
  start = dict(zip(union, np.cumsum([0] + sizes[:-1])))
  out_td = jax.tree.structure(apply(params, x1, **kwargs))
  out = []
  for pick in picks:
    cols = np.concatenate([np.arange(start[i], start[i] + math.prod(
        np.shape(leaves[i]))) for i in pick]).astype(int)
    out.append(jax.tree.unflatten(out_td, [
        contract(a[..., cols], b[..., cols], trace_axes, diagonal_axes)
        for a, b in zip(j1, j2)]))
  return out


def summed_logits(apply, axes=(-1,)):
  """The pseudo-NTK's network, written out: Σ_o f_o / √O, axes kept."""
  def g(p, x, **kw):
    def one(y):
      ax = tuple(a % y.ndim for a in axes)
      size = math.prod(y.shape[a] for a in ax)
      return y.sum(axis=ax, keepdims=True) / np.sqrt(size)
    return jax.tree.map(one, apply(p, x, **kw))
  return g
