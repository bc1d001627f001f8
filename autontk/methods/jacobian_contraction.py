"""Method 1: Jacobian contraction.

Materialise J(x1) and J(x2) (per example under ``vmap_axes``) and contract
them over the parameters, with traced and diagonal output axes folded into
the same einsum. Time N·O·[FP] + N²·O²·P, memory N·O·P.
"""

from __future__ import annotations

import dataclasses
import math

import jax

from autontk import _axes
from autontk._options import Implementation
from autontk._problem import NtkProblem
from autontk.methods.registry import register


@dataclasses.dataclass(frozen=True)
class JacobianContractionConfig:
  """Options of the Jacobian-contraction method.

  Attributes:
    mode: "auto" (reverse mode when the outputs are fewer than the
      parameters), "rev" or "fwd": how Jacobians are computed.
    precision: ``jax.lax.Precision`` for the contraction (``None``: backend
      default; "highest" avoids TF32 on GPUs).
  """

  mode: str = "auto"
  precision: str | None = None


def _jac(fun, argnums: int, n_out: int, n_params: int, mode: str):
  fwd = jax.jacfwd(fun, argnums=argnums)
  rev = jax.jacrev(fun, argnums=argnums)
  if mode == "fwd":
    return fwd
  if mode == "rev":
    return rev
  first, second = (fwd, rev) if n_params < n_out else (rev, fwd)

  def jac(*args):
    # Some functions support only one mode: custom_vjp has no JVP, and
    # while loops with dynamic trip counts have no VJP.
    try:
      return first(*args)
    except (TypeError, ValueError) as e:
      if not is_autodiff_mode_error(e):
        raise
      return second(*args)

  return jac


def is_autodiff_mode_error(e: Exception) -> bool:
  """True for JAX's "this function has no JVP / no VJP" errors."""
  msg = str(e)
  return ("can't apply forward-mode autodiff" in msg or
          "Reverse-mode differentiation does not work" in msg)


def jacobians(problem: NtkProblem, which: int,
              mode: str = "auto") -> list[tuple[jax.Array, ...]]:
  """Per output leaf, per parameter leaf: ∂out/∂θ of shape out.shape + θ.shape."""
  outs = problem.out1 if which == 1 else problem.out2
  n_params = problem.n_params
  if problem.vmap is None:
    n_out = sum(math.prod(o.shape) for o in outs)
    return _jac(problem.fn(which), 0, n_out, n_params, mode)(problem.theta)
  g, x_leaves, kw, (x_in, kw_in) = problem.example_fn(which)
  n = problem.batch_size(which)
  n_out = sum(math.prod(o.shape) for o in outs) // max(n, 1)
  jac = _jac(g, 0, n_out, n_params, mode)
  out_axes = list(problem.vmap.out_axes)
  return jax.vmap(jac, in_axes=(None, x_in, kw_in),
                  out_axes=out_axes)(problem.theta, x_leaves, kw)


@register(Implementation.JACOBIAN_CONTRACTION, JacobianContractionConfig)
def compute(problem: NtkProblem,
            config: JacobianContractionConfig | None = None) -> list[jax.Array]:
  config = config or JacobianContractionConfig()
  j1 = jacobians(problem, 1, config.mode)
  j2 = j1 if problem.same_inputs else jacobians(problem, 2, config.mode)
  return contract_jacobians(j1, j2, problem, config.precision)


def contract_jacobians(j1: list, j2: list, problem: NtkProblem,
                       precision=None) -> list[jax.Array]:
  """Kernels from given Jacobians (shared with chunked plans).

  One kernel per :meth:`~autontk._problem.NtkProblem.kernel_slots` entry:
  with ``groups``, each group's kernel sums the terms of its own parameter
  leaves (one pass of Jacobians serves every group).
  """
  members = problem.group_members()
  out = []
  for g, i in problem.kernel_slots():
    axes = problem.axes[i]
    # In the kernel dtype, as the other methods: low-precision parameters
    # (bfloat16 Jacobians) of a float32 output still give a float32 kernel,
    # accumulated in float32.
    dtype = problem.kernel_dtype(i)
    terms = [_axes.contract_outer(j1[i][j], j2[i][j], axes,
                                  precision=precision,
                                  preferred_element_type=dtype)
             for j in members[g]]
    k = sum(terms[1:], terms[0]) / axes.trace_size(problem.out1[i].shape)
    out.append(k.astype(dtype))
  return out
