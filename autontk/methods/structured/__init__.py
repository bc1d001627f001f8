"""Method 3: structured derivatives.

Linearise f, find each parameter's uses in the linear jaxpr and their
cotangents ``∂f/∂y`` (:mod:`.interpreter`), describe each use's ``∂y/∂θ`` by
its structure from the rule table (:mod:`.rule_table`, rules in
:mod:`.rules`), and sum, over every pair of uses of every parameter, the
matrix-Jacobian-Jacobian-matrix product as one einsum (:mod:`.contraction`).
Time N·O·[FP] + Σ MJJMP (Novak et al., 2022, sec. 3.3).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from autontk._options import Implementation
from autontk._problem import NtkProblem
from autontk.methods.registry import register
from autontk.methods.structured import rules  # noqa: F401  (registers rules)
from autontk.methods.structured.contraction import pair_kernel
from autontk.methods.structured.interpreter import SideSpec, analyse
from autontk.methods.structured.rule_table import MissingRuleError


@dataclasses.dataclass(frozen=True)
class StructuredConfig:
  """Options of the structured-derivatives method.

  Attributes:
    structure_rules: use the primitives' structure rules (off: every use is
      a materialised Jacobian, from its Jacobian rule or the generic path).
    jacobian_rules: use the explicit Jacobian rules where a structure rule
      does not apply (off: the generic transpose).
    strict: raise :class:`MissingRuleError` instead of taking the generic
      fallback for a primitive without an applicable rule.
    precision: ``jax.lax.Precision`` of the contractions (``None``: backend
      default).
    optimize: ``jnp.einsum``'s contraction-path strategy.

  >>> import jax.numpy as jnp, autontk
  >>> from autontk._plan import Plan
  >>> from autontk.methods.structured import StructuredConfig
  >>> f = lambda p, x: jnp.tanh(x @ p)
  >>> ntk = autontk.ntk_fn(f, implementation="structured_derivatives")
  >>> plan = Plan(autontk.Implementation.STRUCTURED_DERIVATIVES,
  ...             StructuredConfig(structure_rules=False))
  >>> ntk.execute(plan, jnp.ones((2, 3)), None, jnp.ones((3, 4))).shape
  (2, 2)
  """

  structure_rules: bool = True
  jacobian_rules: bool = True
  strict: bool = False
  precision: str | None = None
  optimize: str = "auto"


def _side(problem: NtkProblem, which: int, config: StructuredConfig):
  spec = SideSpec()
  theta = problem.theta
  if problem.vmap is None:
    fun = problem.fn(which)
    arrays = analyse(lambda *t: fun(t), theta, config, spec)
  else:
    g, x_leaves, kw, (x_in, kw_in) = problem.example_fn(which)

    def one(x_i, kw_i):
      return analyse(lambda *t: g(t, x_i, kw_i), theta, config, spec)

    arrays = jax.vmap(one, in_axes=(x_in, kw_in))(x_leaves, kw)
  return spec, arrays


def _reaches(use, cots, leaf: int) -> bool:
  return cots[leaf] is not None or (
      bool(use.identity) and use.identity[leaf] is not None)


@register(Implementation.STRUCTURED_DERIVATIVES, StructuredConfig)
def compute(problem: NtkProblem,
            config: StructuredConfig | None = None) -> list[jax.Array]:
  """Kernels of ``problem`` (one per output leaf), structured derivatives.

  Args:
    problem: the validated NTK call.
    config: options; ``None`` for the defaults.

  Returns:
    One kernel per output leaf (per group and output leaf with ``groups``,
    group-major), in the kernel layout, divided by the traced axes' size.
  """
  config = config or StructuredConfig()
  spec1, arrays1 = _side(problem, 1, config)
  if problem.same_inputs:
    spec2, arrays2 = spec1, arrays1
  else:
    spec2, arrays2 = _side(problem, 2, config)

  # With groups, each pair of uses adds to the kernel of its parameter's
  # group: one pass serves every group.
  group_of = {j: g for g, members in enumerate(problem.group_members())
              for j in members}
  kernels = [None] * len(problem.kernel_slots())
  for leaf, axes in enumerate(problem.axes):
    dtype = problem.kernel_dtype(leaf)
    batch_axis = (None if problem.vmap is None else
                  problem.vmap.out_axes[leaf])
    totals = [jnp.zeros(problem.kernel_shape(leaf), dtype)
              for _ in range(problem.n_groups)]
    for u1, (cots1, f1) in zip(spec1.uses, arrays1):
      if not _reaches(u1, cots1, leaf):
        continue
      for u2, (cots2, f2) in zip(spec2.uses, arrays2):
        if u2.param != u1.param or not _reaches(u2, cots2, leaf):
          continue
        g = group_of[u1.param]
        totals[g] = totals[g] + pair_kernel(
            u1, (cots1[leaf], f1), u2, (cots2[leaf], f2), axes, batch_axis,
            problem.theta[u1.param].shape, dtype, config.precision,
            config.optimize, leaf, problem.out1[leaf].shape,
            problem.out2[leaf].shape)
    size = axes.trace_size(problem.out1[leaf].shape)
    for g, total in enumerate(totals):
      kernels[g * len(problem.axes) + leaf] = total / size
  return kernels


__all__ = ["StructuredConfig", "MissingRuleError", "compute"]
