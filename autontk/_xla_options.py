"""XLA options the library compiles its own programs with, per platform.

On XLA:CPU (as of jaxlib 0.10), YNNPACK's library fusions run the matrix
products, the convolutions, and fused elementwise and reduction subgraphs.
For the programs the kernel methods emit (many small batched products,
reductions over positions, convolutions of a few channels, each run once
per output entry and example) the elementwise, reduction and convolution
fusions are slower than XLA's own emitters and Eigen's convolutions; the
matrix products alone are not. So on CPU the library compiles its kernels
with YNNPACK for each matrix product alone
(``xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT``).
The ``xla_options`` benchmark suite measures it per model and method
(``docs/performance.md``): faster on CNNs, ViTs, an LM and a scanned
Mixer, unchanged on MLPs, slower on a scanned RNN and a ResNet.

This is a tuning of one backend, not a change of the programs: the same
HLO, other kernels; it carries to no GPU. A JAX whose XLA does not know the
option compiles with its defaults, as does every program when
``AUTONTK_XLA_DEFAULTS=1`` is set. A program the user jits around a kernel
function is compiled with the user's options, not these.

>>> compiler_options("gpu") is None
True
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax

from autontk import _compat

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
               "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
"""What the library's programs are compiled with on XLA:CPU."""

DEFAULTS_ENV = "AUTONTK_XLA_DEFAULTS"
"""Set to ``1`` to compile every program with XLA's own defaults."""


def compiler_options(platform: str | None = None) -> dict[str, Any] | None:
  """The XLA options autontk compiles its own programs with on
  ``platform`` (default: JAX's default backend), or ``None`` for XLA's
  defaults.

  A kernel function called directly is compiled with them. One called
  inside your own ``jax.jit`` is compiled as part of your program, with
  your options (JAX takes options only on the top-level ``jit``); to give
  it the same kernels, pass these::

      step = jax.jit(train_step, compiler_options=autontk.compiler_options())

  On XLA:CPU: YNNPACK for each matrix product alone, XLA's own emitters and
  Eigen's convolutions for the rest, where this XLA knows the option
  (jaxlib 0.10 does, 0.6 does not). ``None`` on other platforms, and
  everywhere when the environment sets ``AUTONTK_XLA_DEFAULTS=1``.
  """
  if (platform or jax.default_backend()) != "cpu":
    return None
  if os.environ.get(DEFAULTS_ENV, "").strip().lower() in ("1", "true",
                                                          "yes"):
    return None
  return dict(CPU_OPTIONS) if _compat.compiler_options_known(CPU_OPTIONS) \
      else None


class Jitted:
  """``jax.jit(fn, **kwargs)``, compiled with :func:`compiler_options` for
  ``platform``. JAX takes compiler options only on a top-level ``jit``: one
  staged into an outer program (the user's ``jit``, a loop body) raises, and
  runs as the plain ``jax.jit`` instead (the outer program's options then
  apply). The check costs nothing on a call that needs none: it is made
  only when the call raises.

  ``lower`` lowers the top-level program.
  """

  def __init__(self, fn: Callable, platform: str | None = None,
               **kwargs: Any):
    options = compiler_options(platform)
    self.inner = jax.jit(fn, **kwargs)
    self.top = (jax.jit(fn, compiler_options=options, **kwargs) if options
                else self.inner)

  def __call__(self, *args: Any) -> Any:
    try:
      return self.top(*args)
    except Exception:
      if self.top is self.inner or not is_traced(args):
        raise
    return self.inner(*args)

  def lower(self, *args: Any, **kwargs: Any) -> Any:
    return self.top.lower(*args, **kwargs)


def is_traced(args: tuple) -> bool:
  """Some leaf of ``args`` is a tracer (an outer transformation)."""
  return any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(args))
