"""Model signatures: stable across processes, sensitive to what matters."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

import autontk
from autontk.plancache.signature import canonical_jaxpr, model_signature

MODEL = textwrap.dedent("""
    import jax, jax.numpy as jnp

    @jax.custom_jvp
    def act(x):
      return jnp.tanh(x)
    act.defjvp(lambda p, t: (act(p[0]), t[0] * (1 - act(p[0]) ** 2)))

    def f(p, x, train=True):
      h = act(x @ p["w"] + p["b"])
      h = jax.jit(lambda z: z * 2.0)(h)
      return h @ p["v"]

    params = {"w": jnp.ones((3, 8)), "b": jnp.zeros((8,)),
              "v": jnp.ones((8, 2))}
    x = jnp.ones((5, 3))
""")


def _model():
  scope: dict = {}
  exec(MODEL, scope)  # noqa: S102 - the same source as the subprocess runs
  return scope["f"], scope["params"], scope["x"]


def _sig(f, x1, x2, params, kwargs=None, **options):
  return model_signature(f, x1, x2, params, kwargs, **options).digest


def test_same_model_in_two_processes_gives_the_same_signature():
  f, params, x = _model()
  here = _sig(f, x, None, params)
  script = MODEL + textwrap.dedent("""
      from autontk.plancache.signature import model_signature
      print(model_signature(f, x, None, params).digest)
  """)
  out = subprocess.run([sys.executable, "-c", script], capture_output=True,
                       text=True, check=True, timeout=120,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.stdout.strip().splitlines()[-1] == here
  assert len(here) == 64 and int(here, 16) >= 0


def test_signature_ignores_values_and_addresses():
  f, params, x = _model()
  base = _sig(f, x, None, params)
  assert _sig(f, x + 1.0, None, jax.tree.map(lambda a: a * 3, params)) == base
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                          (x, params))
  assert _sig(f, abstract[0], None, abstract[1]) == base
  assert "0x" not in canonical_jaxpr(f, params, x, {})


@pytest.mark.parametrize("change", [
    "x_shape", "x_dtype", "param_shape", "activation", "layer", "x2",
    "x2_shape", "trace_axes", "diagonal_axes", "vmap_axes", "static_kwarg",
    "param_tree"])
def test_signature_changes_with_what_matters(change):
  f, params, x = _model()
  base = _sig(f, x, None, params)
  g, p, x1, x2, kw, opts = f, params, x, None, None, {}
  if change == "x_shape":
    x1 = jnp.ones((6, 3))
  elif change == "x_dtype":
    x1 = x.astype(jnp.bfloat16)
  elif change == "param_shape":
    p = {**params, "b": jnp.zeros((1, 8))}
  elif change == "activation":
    def g(p, x):
      return jax.nn.relu(x @ p["w"] + p["b"]) * 2.0 @ p["v"]
  elif change == "layer":
    def g(p, x):
      h = f(p, x)
      return h @ jnp.eye(2)
  elif change == "x2":
    x2 = x
  elif change == "x2_shape":
    x2 = jnp.ones((4, 3))
    base = _sig(f, x, jnp.ones((5, 3)), params)
  elif change == "trace_axes":
    opts = {"trace_axes": ()}
  elif change == "diagonal_axes":
    opts = {"diagonal_axes": (0,)}
  elif change == "vmap_axes":
    opts = {"vmap_axes": 0}
  elif change == "static_kwarg":
    kw = {"train": False}
  elif change == "param_tree":
    p = {"layer": params}

    def g(p, x):
      return f(p["layer"], x)
  assert _sig(g, x1, x2, p, kw, **opts) != base


def test_signature_of_an_ntk_fn_uses_its_options():
  f, params, x = _model()
  ntk = autontk.ntk_fn(f, trace_axes=(), vmap_axes=0)
  a = model_signature(ntk, x, None, params)
  b = model_signature(f, x, None, params, trace_axes=(), vmap_axes=0)
  assert a.digest == b.digest
  assert a.parts["trace_axes"] == "tuple()"
  assert a.parts["device_kind"] == jax.devices()[0].device_kind
  assert a.short == a.digest[:12] and str(a) == a.digest


@pytest.mark.parametrize("spelling", [
    {"trace_axes": -1}, {"trace_axes": [-1]}, {"diagonal_axes": None},
    {"diagonal_axes": []}, {"precision": None}, {"wrt": None, "groups": None},
    {"pseudo_axes": None}])
def test_equivalent_option_spellings_share_one_digest(spelling):
  """An option spelled another way, given directly or through an NtkFn
  (or through tune, which keys by the NtkFn), is one computation: one
  signature, one plan-cache entry."""
  f, params, x = _model()
  base = _sig(f, x, None, params)
  assert _sig(f, x, None, params, **spelling) == base
  ntk = autontk.ntk_fn(f, **spelling)
  assert model_signature(ntk, x, None, params).digest == base
  assert autontk.tune(f, x, None, params, cache=False, progress=False,
                      max_trials=1, budget_s=30,
                      **spelling).signature.digest == base


def test_options_beside_an_ntk_fn_or_unknown_ones_raise():
  f, params, x = _model()
  with pytest.raises(TypeError, match="given with an NtkFn"):
    model_signature(autontk.ntk_fn(f), x, None, params, trace_axes=())
  with pytest.raises(TypeError, match="Unknown NTK options"):
    model_signature(f, x, None, params, trace_axis=())


def test_signature_with_rng_kwarg_and_bad_f():
  def f(p, x, rng=None):
    keep = jax.random.bernoulli(rng, 0.5, x.shape)
    return (x * keep) @ p

  p, x = jnp.ones((3, 2)), jnp.ones((4, 3))
  a = _sig(f, x, None, p, {"rng": jax.random.key(0)})
  b = _sig(f, x, None, p, {"rng": jax.random.key(1)})
  assert a == b
  with pytest.raises(TypeError, match="`f` must be callable"):
    model_signature(3, x, None, p)
