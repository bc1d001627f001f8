"""What every solver checks and reports: operands, convergence, progress."""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Iterator

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

PROGRESS_DELAY_S = 1.0
"""With ``progress=None``, a bar appears once a run has taken this long."""


class ConvergenceWarning(UserWarning):
  """A solver stopped before reaching its tolerance; the message gives the
  residual it reached."""


def operator_size(op: Any) -> int:
  """``M`` of a square operator, or a ``TypeError``/``ValueError``."""
  if not hasattr(op, "matmat") or not hasattr(op, "shape"):
    raise TypeError(f"`op` must be a kernel operator (with `shape` and "
                    f"`matmat`); got {type(op).__name__}. Wrap a dense kernel "
                    "in autontk.MatrixOperator.")
  shape = tuple(op.shape)
  if len(shape) != 2 or shape[0] != shape[1]:
    raise ValueError(f"`op` must be square; its shape is {shape}.")
  return int(shape[0])


def columns(op: Any, b: Any, name: str = "b") -> tuple[Any, bool]:
  """``(b as (M, R) in op's dtype, b was a vector)``; raises on a shape
  mismatch or a non-finite entry."""
  m = operator_size(op)
  b = jnp.asarray(b)
  if b.ndim not in (1, 2) or b.shape[0] != m:
    raise ValueError(f"`{name}` must have shape ({m},) or ({m}, R) for an "
                     f"operator of shape {tuple(op.shape)}; got {b.shape}.")
  if not bool(jnp.all(jnp.isfinite(b))):
    raise ValueError(f"`{name}` has non-finite entries.")
  vector = b.ndim == 1
  b = b[:, None] if vector else b
  return b.astype(jnp.result_type(op.dtype, b.dtype)), vector


def check_scalar(value: Any, name: str, minimum: float | None = None) -> float:
  value = float(value)
  if not math.isfinite(value) or (minimum is not None and value < minimum):
    low = "" if minimum is None else f" and at least {minimum}"
    raise ValueError(f"`{name}` must be finite{low}; got {value}.")
  return value


def check_finite(result: Any, what: str) -> None:
  """Raises when a solver's result is not finite (a non-finite kernel, or
  one that is not positive semi-definite)."""
  if not bool(jnp.all(jnp.isfinite(result))):
    raise ValueError(f"{what} is not finite: the kernel has non-finite "
                     "entries, or is not positive (semi-)definite.")


def warn_not_converged(what: str, residual: float, tol: float,
                       iterations: int) -> None:
  warnings.warn(
      f"{what} did not converge: relative residual {residual:.3g} > tol "
      f"{tol:.3g} after {iterations} iterations. Raise `maxiter`, use a "
      "preconditioner or a shift, or loosen `tol`.", ConvergenceWarning,
      stacklevel=3)


def relative(residual: Any, reference: Any) -> float:
  """``max ‖residual‖ / ‖reference‖`` over columns (0 for zero columns)."""
  r = np.linalg.norm(np.asarray(residual, np.float64), axis=0)
  b = np.linalg.norm(np.asarray(reference, np.float64), axis=0)
  return float(np.max(np.where(b > 0, r / np.where(b > 0, b, 1), r),
                      initial=0.0))


@contextlib.contextmanager
def progress_bar(total: int, desc: str, progress: bool | None
                 ) -> Iterator[Any]:
  """A tqdm bar: always (``True``), never (``False``), or once the run has
  taken :data:`PROGRESS_DELAY_S` (``None``)."""
  bar = tqdm(total=total, desc=desc, disable=progress is False,
             delay=PROGRESS_DELAY_S if progress is None else 0.0,
             leave=False)
  try:
    yield bar
  finally:
    bar.close()
