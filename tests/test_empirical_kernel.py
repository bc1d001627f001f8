"""``empirical_kernel_fn`` against the naive-Jacobian reference, and
``linearize`` / ``taylor_expand`` against closed forms in float64."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autontk
import models
from helpers import assert_kernels_close
import reference
from reference import reference_nngp, reference_ntk


@functools.lru_cache(maxsize=None)
def _kernel_fn(trace_axes):
  return autontk.empirical_kernel_fn(_case().f, trace_axes=trace_axes)


@functools.lru_cache(maxsize=None)
def _case():
  return models.mlp()


@pytest.mark.parametrize("trace_axes", [(-1,), ()], ids=["traced", "untraced"])
@pytest.mark.parametrize("get", ["nngp", "ntk", ("ntk", "nngp"), None],
                         ids=str)
@pytest.mark.parametrize("same", [True, False], ids=["x2=None", "x2"])
def test_empirical_kernel_fn(trace_axes, get, same):
  case = _case()
  x2 = None if same else case.x2
  out = _kernel_fn(trace_axes)(case.x1, x2, get, case.params)
  want = {g: fn(case.f, case.params, case.x1, x2, trace_axes)
          for g, fn in (("nngp", reference_nngp), ("ntk", reference_ntk))}
  if isinstance(get, str):
    assert_kernels_close(out, want[get])
    return
  gets = ("nngp", "ntk") if get is None else get
  assert type(out).__name__ == "EmpiricalKernel" and out._fields == gets
  for g in gets:
    assert_kernels_close(getattr(out, g), want[g])


@pytest.mark.parametrize("implementation", ["jacobian_contraction",
                                            "ntk_vector_products"])
@pytest.mark.parametrize("same", [True, False], ids=["x2=None", "x2"])
def test_both_kernels_share_the_forward_pass(implementation, same):
  """Asked for both kernels with a one-shot Jacobian-contraction plan, f is
  traced as often as for the NTK alone (once to shape the call, once per
  input in the program); another plan keeps two programs. Values against
  the float64 reference either way."""
  case = _case()
  traces = []

  def f(p, x):
    traces.append(1)
    return case.f(p, x)

  x2 = None if same else case.x2

  def count(get):
    traces.clear()
    kernel_fn = autontk.empirical_kernel_fn(f, implementation=implementation)
    out = kernel_fn(case.x1, x2, get, case.params)
    return out, len(traces)

  both, n_both = count(("nngp", "ntk"))
  _, n_nngp = count("nngp")
  _, n_ntk = count("ntk")
  if implementation == "jacobian_contraction":
    assert n_both == n_ntk < n_nngp + n_ntk
  else:
    assert n_both == n_nngp + n_ntk
  assert_kernels_close(both.nngp, reference_nngp(case.f, case.params,
                                                 case.x1, x2, (-1,)))
  assert_kernels_close(both.ntk, reference_ntk(case.f, case.params, case.x1,
                                               x2, (-1,)))


def test_empirical_kernel_fn_params_by_keyword_and_pytree_outputs():
  case = _case()
  kernel_fn = _kernel_fn((-1,))
  by_kw = kernel_fn(case.x1, None, "ntk", params=case.params)
  np.testing.assert_allclose(by_kw, kernel_fn(case.x1, None, "ntk",
                                              case.params))
  tree = models.pytree_io()
  out = autontk.empirical_kernel_fn(tree.f)(tree.x1, None, ("nngp", "ntk"),
                                            tree.params)
  want = reference_ntk(tree.f, tree.params, tree.x1, None)
  assert jax.tree.structure(jax.tree.map(lambda k: k.ntk, out, is_leaf=(
      lambda v: type(v).__name__ == "EmpiricalKernel"))) == (
          jax.tree.structure(want))
  with pytest.raises(ValueError, match="get"):
    kernel_fn(case.x1, None, "nngp_typo", case.params)


def _model(p, x):
  return {"y": jnp.exp(x @ p["w"] + p["b"]), "z": x @ p["w"]}


def _series(params, dparams, x, degree):
  """The Taylor series of ``_model`` along ``dparams``, in closed form: the
  k-th derivative of ``exp(u + s·v)`` in ``s`` is ``v^k exp(u)``."""
  u = x @ params["w"] + params["b"]
  v = x @ dparams["w"] + dparams["b"]
  y = sum(v ** k / np.prod(np.arange(1, k + 1)) for k in range(degree + 1))
  z = x @ params["w"] + (x @ dparams["w"] if degree >= 1 else 0.)
  return {"y": np.exp(u) * y, "z": z}


@pytest.mark.parametrize("degree", [0, 1, 2, 4])
def test_taylor_expand_and_linearize(degree):
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4))
    params = {"w": rng.standard_normal((4, 2)) * 0.3,
              "b": rng.standard_normal(2) * 0.1}
    new = jax.tree.map(lambda a: a + 0.2 * rng.standard_normal(a.shape),
                       params)
    dparams = jax.tree.map(lambda a, b: a - b, new, params)
    params_j = jax.tree.map(jnp.asarray, params)
    got = autontk.taylor_expand(_model, params_j, degree)(
        jax.tree.map(jnp.asarray, new), jnp.asarray(x))
    want = _series(params, dparams, x, degree)
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-12)
    if degree == 1:
      lin = autontk.linearize(_model, params_j)(
          jax.tree.map(jnp.asarray, new), jnp.asarray(x))
      for k in want:
        np.testing.assert_allclose(lin[k], want[k], rtol=1e-12)


@pytest.mark.parametrize("name", ["dropout_kwargs", "pytree_io"])
def test_linearize_matches_the_naive_jacobian(name):
  """Against ``J (p - p0)`` from the reference Jacobian; kwargs pass
  through, integer parameters are held constant."""
  case = getattr(models, name)()
  kwargs = dict(case.kwargs, shift=jnp.float32(0.5)) if case.kwargs else {}
  floats = [l for l in jax.tree.leaves(case.params)
            if jnp.issubdtype(l.dtype, jnp.floating)]
  rng = np.random.default_rng(1)
  deltas = [0.01 * rng.standard_normal(l.shape).astype(l.dtype)
            for l in floats]
  it = iter(deltas)
  new = jax.tree.map(lambda l: l + next(it) if jnp.issubdtype(
      l.dtype, jnp.floating) else l, case.params)
  got = autontk.linearize(case.f, case.params)(new, case.x1, **kwargs)
  jac = reference.jacobian_leaves(case.f, case.params, case.x1, **kwargs)
  delta = np.concatenate([d.reshape(-1) for d in deltas]).astype(np.float64)
  base = jax.tree.leaves(case.f(case.params, case.x1, **kwargs))
  for g, j, b in zip(jax.tree.leaves(got), jac, base):
    np.testing.assert_allclose(g, np.asarray(b, np.float64) + j @ delta,
                               rtol=1e-4, atol=1e-5)
