"""The XLA options the library compiles its own programs with: on CPU,
YNNPACK for the matrix products alone; never on an inner ``jit``; off with
``AUTONTK_XLA_DEFAULTS=1``; the kernels unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autontk
from autontk import _xla_options
from tests.reference import reference_ntk

pytestmark = pytest.mark.compat


def _cnn(p, x):
  h = jax.lax.conv_general_dilated(x, p["k"], (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.tanh(h).mean((1, 2)) @ p["w"]


PARAMS = {"k": jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 8)) / 4,
          "w": jax.random.normal(jax.random.PRNGKey(2), (8, 3)) / 3}
X = jax.random.normal(jax.random.PRNGKey(3), (3, 6, 6, 3))


def test_options_per_platform(monkeypatch):
  assert _xla_options.compiler_options("gpu") is None
  assert _xla_options.compiler_options("tpu") is None
  monkeypatch.setenv(_xla_options.DEFAULTS_ENV, "1")
  assert _xla_options.compiler_options("cpu") is None
  monkeypatch.delenv(_xla_options.DEFAULTS_ENV)
  options = _xla_options.compiler_options("cpu")
  # This XLA knows the option (else None: XLA's defaults, nothing fails).
  assert options in (None, _xla_options.CPU_OPTIONS)
  assert autontk.compiler_options() == _xla_options.compiler_options()


def test_top_level_program_has_no_library_convolution():
  """With the options, XLA:CPU runs the convolution itself, not as a
  YNNPACK fusion (what makes the CNNs faster); without, a YNNPACK fusion
  where this XLA has them."""
  if not _xla_options.compiler_options("cpu"):
    pytest.skip("this XLA compiles with its defaults")
  f = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  args = (jnp.ones((8, 16, 16, 32)), jnp.ones((3, 3, 32, 32)))
  text = _xla_options.Jitted(f).lower(*args).compile().as_text()
  assert "__ynn_fusion" not in text and "convolution(" in text


@pytest.mark.parametrize("implementation", ["structured_derivatives",
                                            "jacobian_contraction",
                                            "ntk_vector_products"])
def test_kernels_called_directly_and_under_transformations(implementation):
  """A direct call (compiled with the options), a call under the user's
  ``jit`` and under ``vmap`` (JAX refuses options on an inner ``jit``: the
  plain program runs there) all give the reference kernel; ``grad`` runs
  through a direct call as through a jitted one."""
  ntk = autontk.ntk_fn(_cnn, vmap_axes=0, implementation=implementation)
  ref = reference_ntk(_cnn, PARAMS, X, None, (-1,), ())
  np.testing.assert_allclose(ntk(X, None, PARAMS), ref, rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(
      jax.jit(lambda x, p: ntk(x, None, p))(X, PARAMS), ref, rtol=1e-4,
      atol=1e-6)
  diag = jax.vmap(lambda x: ntk(x[None], None, PARAMS)[0, 0])(X)
  np.testing.assert_allclose(diag, np.diag(ref), rtol=1e-4, atol=1e-6)
  # grad through a direct call and through the user's jit: the same.
  total = lambda p: ntk(X, None, p).sum()  # noqa: E731
  g1, g2 = jax.grad(total)(PARAMS), jax.grad(jax.jit(total))(PARAMS)
  for k in PARAMS:
    np.testing.assert_allclose(g1[k], g2[k], rtol=1e-5, atol=1e-6)


def test_defaults_env_gives_the_same_kernel(monkeypatch):
  monkeypatch.setenv(_xla_options.DEFAULTS_ENV, "1")
  ntk = autontk.ntk_fn(_cnn, vmap_axes=0,
                       implementation="structured_derivatives")
  np.testing.assert_allclose(ntk(X, None, PARAMS),
                             reference_ntk(_cnn, PARAMS, X, None, (-1,), ()),
                             rtol=1e-4, atol=1e-6)


def test_user_program_with_the_options():
  """What the docs tell a user who jits around a kernel function."""
  ntk = autontk.ntk_fn(_cnn, vmap_axes=0)
  step = jax.jit(lambda x, p: ntk(x, None, p),
                 compiler_options=autontk.compiler_options())
  np.testing.assert_allclose(step(X, PARAMS),
                             reference_ntk(_cnn, PARAMS, X, None, (-1,), ()),
                             rtol=1e-4, atol=1e-6)
