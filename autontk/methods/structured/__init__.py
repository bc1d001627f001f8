"""Method 3: structured derivatives.

Linearise f, find each parameter's uses in the linear jaxpr and their
cotangents ``∂f/∂y`` (:mod:`.interpreter`), describe each use's ``∂y/∂θ`` by
its structure from the rule table (:mod:`.rule_table`, rules in
:mod:`.rules`), and sum, over every pair of uses of every parameter, the
matrix-Jacobian-Jacobian-matrix product as one einsum (:mod:`.contraction`).
Slices of a parameter count as sub-parameters (:mod:`.regions`), so layers
stacked in one leaf cost what separate leaves cost, and ``scan`` / ``cond``
/ ``while`` bodies are walked with the rules too (:mod:`.control_flow`). Time
N·O·[FP] + Σ MJJMP (Novak et al., 2022, sec. 3.3). docs/structured.md says
what is structured and when the exact generic fallback is taken.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from autontk import _compat
from autontk._options import Implementation
from autontk._problem import NtkProblem
from autontk.methods.registry import register
from autontk.methods.structured import rules  # noqa: F401  (registers rules)
from autontk.methods.structured.contraction import (PairLayout, PairSide,
                                                    apply_heads, defers_heads,
                                                    pair_kernel, restrict)
from autontk.methods.structured.regions import align
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
    views: treat a parameter seen through static slices, known indices or
      transposes as sub-parameters, so the layer consuming a slice keeps
      its structure and uses of disjoint slices are never paired (off:
      such a view is a use with a materialised Jacobian).
    loops: walk ``scan`` bodies, ``cond`` branches and ``while`` loops
      with a trip count known at trace time that use parameters with the
      rules, a parameter stacked along a scan being one sub-parameter per
      iteration (off: the loop is one use with the generic Jacobian).
    unroll_loops_up_to: a ``scan`` walked structurally with at most this
      many iterations (loops nested in it share the budget) is unrolled in
      the program that computes the cotangents; longer ones keep the
      model's own ``unroll``. No value changes: a short loop then runs and
      compiles like the same layers held separately (XLA:CPU runs
      transposed convolutions several times slower inside a loop), a long
      one keeps its flat compile time. ``0``: never unroll.
    output_heads: an output that is a linear head ``s · dot_general(g, W)``
      of a smaller ``g`` plus parameters used as themselves (an LM's tied
      logits) gets its cotangents over ``g``'s entries, the head entering
      each pair product as one more operand (:mod:`.heads`); off: over the
      output's entries.
    custom_vjp: ``"rule"`` (default) honours every ``custom_vjp``
      function's backward rule, exactly as ``jax.grad`` does: one applied to
      activations costs nothing extra, one applied to a parameter directly
      takes the generic fallback for that use. ``"primal"`` differentiates
      the primal computation instead (the backward rule is ignored), so its
      layers keep their structure: exact when the rule is a numerically
      stable rewrite of the primal's derivative, wrong for rules that change
      the gradient (clipping, straight-through estimators).

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
  views: bool = True
  loops: bool = True
  custom_vjp: str = "rule"
  unroll_loops_up_to: int = 8
  output_heads: bool = True

  def __post_init__(self):
    if self.custom_vjp not in ("rule", "primal"):
      raise ValueError(f"StructuredConfig.custom_vjp must be 'rule' or "
                       f"'primal'; got {self.custom_vjp!r}.")


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

    try:
      # A head's map is the model's weight, the same for every example: kept
      # unbatched, the pair products contract it once, not per pair.
      arrays = jax.vmap(one, in_axes=(x_in, kw_in),
                        out_axes=(0, None))(x_leaves, kw)
    except ValueError:  # a head that depends on the example
      arrays = jax.vmap(one, in_axes=(x_in, kw_in))(x_leaves, kw)
  return spec, arrays


def _reaches(use, cots, leaf: int) -> bool:
  return cots[leaf] is not None or (
      bool(use.identity) and use.identity[leaf] is not None)


def _head(spec, arrays, leaf: int):
  head = spec.heads[leaf] if spec.heads else None
  return None if head is None else (head, arrays[leaf])


def _leaf_kernels(problem: NtkProblem, leaf: int, sides,
                  config: StructuredConfig) -> list[jax.Array]:
  """Σ over pairs of uses of the same parameter, one output leaf; one sum
  per group (the group of the pair's parameter) with ``groups``.

  Uses of disjoint regions of a leaf (different slices) are never paired;
  uses of overlapping ones are restricted to their common entries.
  """
  (spec1, (arrays1, heads1)), (spec2, (arrays2, heads2)) = sides
  dtype = problem.kernel_dtype(leaf)
  shape1 = tuple(problem.out1[leaf].shape)
  shape2 = tuple(problem.out2[leaf].shape)
  base = PairLayout(
      problem.axes[leaf],
      None if problem.vmap is None else problem.vmap.out_axes[leaf], leaf,
      (), dtype, config.precision, config.optimize)
  group_of = {j: g for g, members in enumerate(problem.group_members())
              for j in members}
  totals = [jnp.zeros(problem.kernel_shape(leaf), dtype)
            for _ in range(problem.n_groups)]
  in_heads: list[jax.Array | None] = [None] * problem.n_groups
  head_sides: list[tuple[PairSide, PairSide] | None] = [
      None] * problem.n_groups
  for u1, (cots1, f1) in zip(spec1.uses, arrays1):
    if not _reaches(u1, cots1, leaf):
      continue
    side1 = PairSide(u1, cots1[leaf], f1, shape1,
                     _head(spec1, heads1, leaf))
    for u2, (cots2, f2) in zip(spec2.uses, arrays2):
      if u2.param != u1.param or not _reaches(u2, cots2, leaf):
        continue
      common = align(u1.region, u2.region)
      if common is None:
        continue  # disjoint slices of the leaf
      layout = dataclasses.replace(base, theta_shape=common.sizes)
      side2 = PairSide(u2, cots2[leaf], f2, shape2,
                       _head(spec2, heads2, leaf))
      g = group_of[u1.param]
      defer = defers_heads(side1, side2, layout)
      block = pair_kernel(restrict(side1, common.positions1, layout),
                          restrict(side2, common.positions2, layout), layout,
                          defer_heads=defer)
      if defer:  # summed in the heads' inputs' axes, the heads applied once
        head_sides[g] = (side1, side2)
        in_heads[g] = block if in_heads[g] is None else in_heads[g] + block
      else:
        totals[g] = totals[g] + block
  for g, block in enumerate(in_heads):
    if block is not None:
      totals[g] = totals[g] + apply_heads(block, *head_sides[g], base)
  size = problem.axes[leaf].trace_size(shape1)
  return [total / size for total in totals]


@register(Implementation.STRUCTURED_DERIVATIVES, StructuredConfig,
          unsupported=_compat.structured_support)
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
  # Named scopes: a profile of the compiled program tells the cotangents
  # (both sides' probing passes) from the pair products.
  with jax.named_scope("structured_cotangents"):
    side1 = _side(problem, 1, config)
    side2 = side1 if problem.same_inputs else _side(problem, 2, config)
  with jax.named_scope("structured_pairs"):
    per_leaf = [_leaf_kernels(problem, leaf, (side1, side2), config)
                for leaf in range(len(problem.axes))]
  return [per_leaf[leaf][g] for g, leaf in problem.kernel_slots()]


__all__ = ["StructuredConfig", "MissingRuleError", "compute"]
