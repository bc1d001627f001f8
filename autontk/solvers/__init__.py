"""Solvers on kernel operators: CG, Lanczos functions, extreme eigenpairs.

They take any :class:`autontk._types.KernelOperator`: a dense
:class:`autontk.MatrixOperator` or a matrix-free :class:`autontk.NtkOperator`.
Built on JAX's own iterations (``jax.scipy.sparse.linalg.cg``,
``lobpcg_standard``) where those fit; Lanczos is this package's. Every
solver has a tolerance, an iteration limit, a progress bar for long runs,
and warns (:class:`ConvergenceWarning`, with the residual) rather than
return an unconverged answer silently. See ``docs/operator.md``.
"""

from autontk.solvers.cg import solve as solve
from autontk.solvers.checks import ConvergenceWarning as ConvergenceWarning
from autontk.solvers.eigen import eigsh as eigsh
from autontk.solvers.eigen import max_eigenvalue as max_eigenvalue
from autontk.solvers.lanczos import matfun as matfun
