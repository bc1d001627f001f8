"""Kernel diagnostics at dataset scale, without forming the kernel.

The spectrum (:func:`eigvals`, :func:`condition_number`), :func:`trace`,
:func:`frobenius_norm`, :func:`effective_rank`, centered kernel-target
:func:`alignment` and the :func:`kernel_distance` between checkpoints, for a
dense kernel, a kernel operator or a network, per parameter group. Each is
exact on the dense route and estimated matrix-free (Lanczos, Hutch++,
stochastic Lanczos quadrature) when that is cheaper or the kernel does not
fit; every result is an :class:`Estimate` stating its error and route.
:func:`report` gathers them all for one network. See
``docs/diagnostics.md``.
"""

from autontk.diagnostics.estimate import Estimate as Estimate
from autontk.diagnostics.frobenius import alignment as alignment
from autontk.diagnostics.frobenius import effective_rank as effective_rank
from autontk.diagnostics.frobenius import frobenius_norm as frobenius_norm
from autontk.diagnostics.frobenius import kernel_distance as kernel_distance
from autontk.diagnostics.report import Report as Report
from autontk.diagnostics.report import report as report
from autontk.diagnostics.sources import Kernel as Kernel
from autontk.diagnostics.sources import kernels as kernels
from autontk.diagnostics.spectrum import condition_number as condition_number
from autontk.diagnostics.spectrum import eigvals as eigvals
from autontk.diagnostics.spectrum import trace as trace
