"""Running on JAX releases whose internals differ (docs/jax_versions.md).

A JAX internal that structured derivatives read is taken away (as a newer
release might rename it): ``import autontk`` still works, ``auto`` plans
with the other methods after one warning and stays exact, and asking for
structured derivatives explicitly raises an error naming the JAX version
and the internal.
"""

import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import jax.stages
import pytest
from jax import lax

import autontk
from autontk import _compat, methods
from autontk._options import Implementation
from autontk.methods import registry
from autontk.plancache.signature import model_signature
from helpers import assert_kernels_close, rand
from reference import reference_ntk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRUCTURED = Implementation.STRUCTURED_DERIVATIVES


def _mlp(p, x):
  return jnp.tanh(x @ p["w1"]) @ p["w2"]


def _params():
  return {"w1": rand(0, (3, 5)), "w2": rand(1, (5, 2))}


@pytest.fixture
def missing_internal(monkeypatch):
  """This JAX lacks an internal structured derivatives read."""
  monkeypatch.setattr(_compat, "_MISSING", ["jax.extend.core.DropVar"])
  monkeypatch.setattr(registry, "_WARNED", set())


@pytest.mark.compat
def test_auto_falls_back_with_one_warning(missing_internal):
  p, x1, x2 = _params(), rand(2, (4, 3)), rand(3, (3, 3))
  ntk = autontk.ntk_fn(_mlp, implementation="auto")
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    got = ntk(x1, x2, p)
    ntk(x2, x1, p)
    assert STRUCTURED not in methods.available()
  named = [w for w in caught if "DropVar" in str(w.message)]
  assert len(named) == 1, [str(w.message) for w in caught]
  assert jax.__version__ in str(named[0].message)
  assert_kernels_close(got, reference_ntk(_mlp, p, x1, x2))


@pytest.mark.compat
def test_explicit_structured_names_version_and_internal(missing_internal):
  ntk = autontk.ntk_fn(_mlp, implementation="structured_derivatives")
  with pytest.raises(autontk.UnsupportedJaxError) as e:
    ntk(rand(2, (4, 3)), None, _params())
  assert f"jax {jax.__version__}" in str(e.value)
  assert "jax.extend.core.DropVar" in str(e.value)


@pytest.fixture
def fresh_form_check():
  """The jaxpr-form check reruns (it is cached per process)."""
  _compat._linear_jaxpr_form.cache_clear()  # noqa: SLF001
  yield
  _compat._linear_jaxpr_form.cache_clear()  # noqa: SLF001


@pytest.mark.compat
def test_changed_jaxpr_form_is_named(monkeypatch, fresh_form_check):
  # A parameter the interpreter reads that this JAX's scan does not have.
  monkeypatch.setattr(_compat, "_READ_PARAMS",
                      {"scan_p": ("jaxpr", "renamed_length")})
  assert "scan_p" in _compat.structured_support()


@pytest.mark.compat
def test_this_jax_is_recognised():
  assert _compat.structured_support() is None
  assert STRUCTURED in methods.available()


@pytest.mark.compat
def test_scan_transposed_through_vjp_is_exact(monkeypatch):
  """The jax 0.6 path (a scan in the probed function transposed as a VJP)
  gives the same kernel on any release."""
  monkeypatch.setattr(_compat, "_transposes_user_scans", lambda: False)

  def rnn(p, x):  # x: (N, T, 2)
    def step(h, xt):
      h = jnp.tanh(xt @ p["wx"] + h @ p["wh"])
      return h, h
    h, _ = lax.scan(step, jnp.zeros((x.shape[0], 3)), jnp.swapaxes(x, 0, 1))
    return h @ p["out"]

  p = {"wx": rand(0, (2, 3)), "wh": rand(1, (3, 3)), "out": rand(2, (3, 2))}
  x1, x2 = rand(3, (2, 4, 2)), rand(4, (3, 4, 2))
  ntk = autontk.ntk_fn(rnn, implementation="structured_derivatives")
  assert_kernels_close(ntk(x1, x2, p), reference_ntk(rnn, p, x1, x2))


@pytest.mark.compat
def test_plans_are_keyed_by_jax_version(monkeypatch):
  p, x = _params(), rand(2, (4, 3))
  before = model_signature(_mlp, x, None, p)
  monkeypatch.setattr(jax, "__version__", jax.__version__ + ".post1")
  after = model_signature(_mlp, x, None, p)
  assert before.digest != after.digest
  assert after.parts["jax"].endswith(".post1")


@pytest.mark.compat
def test_unknown_cost_analysis_format_still_plans_exactly(monkeypatch):
  # The cost model reads what it recognises and plans without the rest.
  monkeypatch.setattr(jax.stages.Lowered, "cost_analysis",
                      lambda self: "a format autontk does not know")
  monkeypatch.setattr(jax.stages.Compiled, "cost_analysis",
                      lambda self: ["?"])
  p, x1, x2 = _params(), rand(2, (4, 3)), rand(3, (3, 3))
  got = autontk.ntk_fn(_mlp, implementation="auto")(x1, x2, p)
  assert_kernels_close(got, reference_ntk(_mlp, p, x1, x2))


_WITHOUT_DROPVAR = textwrap.dedent("""
    import sys, warnings
    sys.path.insert(0, "tests")
    warnings.simplefilter("always")
    import jax, jax.numpy as jnp
    import jax._src.core as core
    import jax.extend.core as jex_core
    # As if this JAX had renamed DropVar: gone from every place autontk
    # looks while it is imported (JAX itself gets it back afterwards).
    saved = core.DropVar
    del core.DropVar
    jex_core.__dict__.pop("DropVar", None)
    import autontk
    core.DropVar = saved
    from autontk import methods
    from helpers import assert_kernels_close, rand
    from reference import reference_ntk

    def f(p, x):
      return jnp.tanh(x @ p["w1"]) @ p["w2"]

    p = {"w1": rand(0, (3, 5)), "w2": rand(1, (5, 2))}
    x1, x2 = rand(2, (4, 3)), rand(3, (3, 3))
    with warnings.catch_warnings(record=True) as caught:
      got = autontk.ntk_fn(f, implementation="auto")(x1, x2, p)
    named = [str(w.message) for w in caught if "DropVar" in str(w.message)]
    assert len(named) == 1, [str(w.message) for w in caught]
    assert_kernels_close(got, reference_ntk(f, p, x1, x2))
    try:
      autontk.ntk_fn(f, implementation="structured_derivatives")(x1, x2, p)
    except methods.UnsupportedJaxError as e:
      assert "DropVar" in str(e) and jax.__version__ in str(e), e
    else:
      raise AssertionError("structured_derivatives ran without DropVar")
    print("ok")
""")


@pytest.mark.compat
@pytest.mark.subprocess
def test_import_without_an_internal():
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep +
             os.environ.get("PYTHONPATH", ""))
  run = subprocess.run([sys.executable, "-c", _WITHOUT_DROPVAR], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stdout.strip().endswith("ok")
