"""The batch geometry helpers, each against a brute-force construction.

Kernels here are built by ``_axes.contract_outer`` from random "Jacobians"
(the kernel layout's own definition), so positions, mirrors and
traced-as-diagonal are checked against kernels, not against the formulas
they implement.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autontk._axes import LeafAxes, contract_outer, leaf_axes
from autontk._batch_geometry import (DIAGONAL, PAIRWISE, TRACED, BatchGrid,
                                     BatchLayout, batch_kind, kernel_position,
                                     kwargs_leaf_axes, mean_over_batch,
                                     mirror_perm, take_examples,
                                     traced_as_diagonal, traced_batch_options)


def _all_axes(max_rank=3):
  """Every assignment of traced / diagonal / plain to the axes of ranks
  1..max_rank."""
  out = []
  for ndim in range(1, max_rank + 1):
    for kinds in itertools.product("tdp", repeat=ndim):
      out.append(LeafAxes(ndim,
                          tuple(a for a, k in enumerate(kinds) if k == "t"),
                          tuple(a for a, k in enumerate(kinds) if k == "d")))
  return out


AXES = _all_axes()


def _close(actual, desired):
  """Equal up to float32 rounding (contract_outer computes in float32)."""
  desired = np.asarray(desired, np.float64)
  np.testing.assert_allclose(np.asarray(actual, np.float64), desired,
                             rtol=2e-5, atol=2e-6 * np.abs(desired).max())


def _ids(axes):
  return f"r{axes.ndim}-t{axes.trace}-d{axes.diagonal}"


def _jacobians(axes, seed=0, params=3):
  """J1, J2 of shapes (out1..., P), (out2..., P): distinct sizes per axis;
  traced and diagonal axes have equal sizes on both sides."""
  rng = np.random.default_rng(seed)
  s1 = [2 + a for a in range(axes.ndim)]
  s2 = [s if a in axes.trace + axes.diagonal else s + 3
        for a, s in enumerate(s1)]
  return (rng.normal(size=s1 + [params]), rng.normal(size=s2 + [params]))


@pytest.mark.parametrize("axes", AXES, ids=_ids)
def test_kernel_position_is_where_the_axis_lands(axes):
  _, _, out = axes.sublists()  # label 2*a names axis a on side 1
  for a in range(axes.ndim):
    if a in axes.trace:
      continue
    assert kernel_position(axes, a) == out.index(2 * a)
    assert BatchLayout(axes, a).position == out.index(2 * a)


@pytest.mark.parametrize("axes", AXES, ids=_ids)
def test_mirror_perm_swaps_the_sides(axes):
  j1, j2 = _jacobians(axes)
  k12 = np.asarray(contract_outer(j1, j2, axes))
  k21 = np.asarray(contract_outer(j2, j1, axes))
  perm = mirror_perm(axes)
  _close(k12.transpose(perm), k21)
  np.testing.assert_array_equal(k12.transpose(perm).transpose(perm), k12)
  # Stacked kernels: leading axes stay in place.
  stack = np.stack([k12, 2 * k12])
  _close(stack.transpose(mirror_perm(axes, lead=1)),
         np.stack([k21, 2 * k21]))


def test_mirror_perm_example():
  k = np.arange(2 * 3 * 4 * 5 * 6.).reshape(2, 3, 4, 5, 6)
  axes = LeafAxes(3, (), (1,))  # plain, diagonal, plain
  np.testing.assert_array_equal(k.transpose(mirror_perm(axes)),
                                k.transpose(1, 0, 2, 4, 3))


@pytest.mark.parametrize("axes", [a for a in AXES if a.trace], ids=_ids)
def test_traced_axis_is_the_mean_of_its_diagonal(axes):
  j1, j2 = _jacobians(axes, seed=1)
  traced = np.asarray(contract_outer(j1, j2, axes)) / axes.trace_size(
      j1.shape)
  for b in axes.trace:
    layout = BatchLayout(axes, b)
    assert layout.kind == TRACED and layout.matched
    diag = layout.computed_axes
    assert diag == traced_as_diagonal(axes, b)
    assert b in diag.diagonal and b not in diag.trace
    per_example = np.asarray(contract_outer(j1, j2, diag)) / diag.trace_size(
        j1.shape)
    assert BatchLayout(diag, b).position == layout.position
    n = j1.shape[b]
    _close(mean_over_batch(per_example, layout.position, n), traced)
    _close(mean_over_batch(jnp.asarray(per_example), layout.position, n),
           traced)


@pytest.mark.parametrize("axes", AXES, ids=_ids)
def test_batch_kind(axes):
  for b in range(axes.ndim):
    kind = batch_kind(axes, b)
    assert kind == (TRACED if b in axes.trace else
                    DIAGONAL if b in axes.diagonal else PAIRWISE)
    assert BatchLayout(axes, b).matched == (kind != PAIRWISE)
    if kind != TRACED:
      assert traced_as_diagonal(axes, b) == axes


@pytest.mark.parametrize("trace, diagonal, batch", [
    ((0,), (), 0), ((0, -1), (), 0), ((-1, 1), (), 1), ((2, 0), (1,), 0),
    ((-3,), (-1,), 0)])
def test_traced_batch_options_match_traced_as_diagonal(trace, diagonal, batch):
  shape = (4, 5, 6)
  new_trace, new_diag = traced_batch_options(trace, diagonal, [3], [batch])
  got = leaf_axes(new_trace, new_diag, shape, shape)
  want = traced_as_diagonal(leaf_axes(trace, diagonal, shape, shape), batch)
  assert got == want


def test_traced_batch_options_need_one_entry():
  # Two leaves batched on different axes, both traced, by different entries.
  with pytest.raises(ValueError, match="different entries"):
    traced_batch_options((0, 1), (), [2, 2], [0, 1])


def test_kwargs_leaf_axes_follow_jax_leaf_order():
  kwargs = {"z": np.ones(3), "a": {"q": np.ones(2), "p": (1.0, np.ones(4))},
            "m": np.ones(5)}
  kw_axes = {"a": (None, 0, 0), "m": (0,)}  # a's leaves: p[0], p[1], q
  axes = kwargs_leaf_axes(kwargs, kw_axes)
  leaves = jax.tree.leaves(kwargs)
  assert len(axes) == len(leaves)
  assert axes == [None, 0, 0, 0, None]
  assert [np.shape(v) for v in leaves] == [(), (4,), (2,), (5,), (3,)]


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("start, size", [(0, 3), (3, 3), (6, 3), (5, 4),
                                         (6, 1)])
def test_take_examples_pads_by_repeating_the_last(axis, start, size):
  n = 7
  leaf = np.arange(2 * n * 3.).reshape(2, n, 3).swapaxes(0, 1)
  leaf = np.moveaxis(leaf, 0, axis)
  want = np.take(leaf, [min(i, n - 1) for i in range(start, start + size)],
                 axis=axis)
  host = take_examples(leaf, axis, start, size, n)
  assert isinstance(host, np.ndarray)
  np.testing.assert_array_equal(host, want)
  device = jax.jit(lambda v, s: take_examples(v, axis, s, size, n))(
      jnp.asarray(leaf), jnp.int32(start))
  np.testing.assert_array_equal(np.asarray(device), want)


def test_take_examples_shared_and_scalar_leaves():
  leaf = np.ones((4,))
  assert take_examples(leaf, None, 2, 3, 4) is leaf
  with pytest.raises(ValueError, match="at least one axis"):
    take_examples(np.float32(1.0), 0, 0, 1, 1)


def _covered(grid):
  """Example pairs (i, j) covered by the grid's cells, mirrors included."""
  seen = np.zeros((grid.n1, grid.n2), int)
  for c in grid.cells():
    seen[slice(*c.rows), slice(*c.cols)] += 1
    if c.mirrored:
      seen[slice(*c.cols), slice(*c.rows)] += 1
  return seen


@pytest.mark.parametrize("n1, n2, t1, t2", [(7, 7, 3, 3), (6, 6, 2, 2),
                                            (5, 5, 5, 5), (1, 1, 1, 1)])
def test_symmetric_grid_is_the_upper_triangle(n1, n2, t1, t2):
  grid = BatchGrid(n1, n2, t1, t2, symmetric=True, matched=False)
  r, _ = grid.shape
  keys = [c.key for c in grid.cells()]
  assert keys == [(i, j) for i in range(r) for j in range(i, r)]
  for c in grid.cells():
    assert c.same_inputs == (c.row == c.col)
    assert c.mirrored == (c.row != c.col)
  np.testing.assert_array_equal(_covered(grid), 1)  # once each, no overlap
  kinds = grid.by_kind()
  assert [c.key for c in kinds["diag"]] == [(i, i) for i in range(r)]
  assert [c.key for c in kinds.get("pair", [])] == [
      k for k in keys if k[0] != k[1]]


@pytest.mark.parametrize("symmetric", [True, False])
def test_matched_grid_is_the_diagonal(symmetric):
  grid = BatchGrid(7, 7, 3, 3, symmetric=symmetric, matched=True)
  assert [c.key for c in grid.cells()] == [(0, 0), (1, 1), (2, 2)]
  assert [c.rows for c in grid.cells()] == [(0, 3), (3, 6), (6, 7)]
  assert all(c.same_inputs == symmetric and not c.mirrored
             for c in grid.cells())
  assert list(grid.by_kind()) == ["diag"]
  seen = _covered(grid)
  np.testing.assert_array_equal(np.diag(seen), 1)


def test_general_grid_is_every_cell_row_major():
  grid = BatchGrid(7, 5, 3, 2, symmetric=False, matched=False)
  assert grid.shape == (3, 3)
  assert [c.key for c in grid.cells()] == [(i, j) for i in range(3)
                                           for j in range(3)]
  assert list(grid.by_kind()) == ["pair"]
  assert not any(c.same_inputs or c.mirrored for c in grid.cells())
  np.testing.assert_array_equal(_covered(grid), 1)
  assert grid.cell(2, 2).rows == (6, 7) and grid.cell(2, 2).cols == (4, 5)


def test_grid_fit_validation_and_json():
  assert BatchGrid.fit(5, 3, 4, 4, False, False) == BatchGrid(5, 3, 4, 3,
                                                             False, False)
  grid = BatchGrid(9, 9, 2, 2, True, False)
  assert grid.to_json() == {"n1": 9, "n2": 9, "t1": 2, "t2": 2,
                            "symmetric": True, "matched": False}
  assert BatchGrid(**grid.to_json()) == grid
  with pytest.raises(ValueError, match="square"):
    BatchGrid(9, 9, 2, 3, True, False)
  with pytest.raises(ValueError, match="same batch size"):
    BatchGrid(9, 8, 2, 2, False, True)
  with pytest.raises(ValueError, match="empty"):
    BatchGrid(0, 3, 1, 1, False, False)


@pytest.mark.parametrize("axes, batch", [
    (LeafAxes(2, (), ()), 0), (LeafAxes(2, (), ()), 1),
    (LeafAxes(3, (0,), ()), 1), (LeafAxes(3, (), (0,)), 2),
    (LeafAxes(2, (), (0,)), 0), (LeafAxes(3, (2,), (0,)), 0)])
def test_layout_index_writes_cells_in_place(axes, batch):
  """Cells written at BatchLayout.index rebuild the whole kernel."""
  j1, j2 = _jacobians(axes, seed=2)
  j1 = np.concatenate([j1] * 3, axis=batch)  # a batch of a few examples
  j2 = np.concatenate([j2] * 3, axis=batch)
  j2 = j2 + np.random.default_rng(3).normal(size=j2.shape)
  layout = BatchLayout(axes, batch)
  full = np.asarray(contract_outer(j1, j2, axes))
  n1, n2 = j1.shape[batch], j2.shape[batch]
  grid = BatchGrid.fit(n1, n2, 2, 2 if layout.matched else 3, False,
                       layout.matched)
  rebuilt = np.full(full.shape, np.nan)
  for c in grid.cells():
    part = np.asarray(contract_outer(
        np.take(j1, range(*c.rows), axis=batch),
        np.take(j2, range(*c.cols), axis=batch), axes))
    rebuilt[layout.index(c.rows, c.cols, full.ndim)] = part
  _close(rebuilt, full)
