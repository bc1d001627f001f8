"""Kernels as linear operators: matrix-free NTKs of whole datasets.

:func:`ntk_operator` gives Θ(x, x) as an :class:`NtkOperator` whose products
run in batches of examples without forming the kernel;
:class:`MatrixOperator` wraps a dense kernel with the same protocol
(:class:`autontk._types.KernelOperator`). The solvers of
:mod:`autontk.solvers` take either; see ``docs/operator.md``.
"""

from autontk.operator.matrix import MatrixOperator as MatrixOperator
from autontk.operator.ntk import CrossOperator as CrossOperator
from autontk.operator.ntk import NtkOperator as NtkOperator
from autontk.operator.ntk import ntk_operator as ntk_operator
