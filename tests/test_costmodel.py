"""Cost extraction, memory budget, device constants and the time predictor."""

from __future__ import annotations

import json
import types

import jax
import jax.numpy as jnp
import pytest

from autontk.costmodel import device, hlo, memory, predict
from autontk.costmodel import features as features_lib
from autontk.costmodel.device import DeviceConstants
from autontk.costmodel.features import CostFeatures
from autontk.costmodel.predict import RooflinePredictor


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("AUTONTK_CACHE_DIR", str(tmp_path))
  machine = tmp_path / "machine" / "device_constants.json"
  monkeypatch.setattr(device, "machine_file", lambda: machine)
  device._reset_memo()
  yield
  device._reset_memo()


# hlo ------------------------------------------------------------------------


@pytest.mark.parametrize("analysis, flops, bytes_", [
    ({"flops": 10.0, "bytes accessed": 4.0}, 10.0, 4.0),
    ([{"flops": 10.0}, {"flops": 5.0, "bytes accessed": 3.0}], 15.0, 3.0),
    (None, None, None),
    ({"flops": -1.0, "bytes accessed": -1}, None, None),
    ({}, None, None),
    ([None, {"flops": float("nan")}], None, None),
    ("garbage", None, None),
])
def test_read_cost_analysis_any_form(analysis, flops, bytes_):
  out = hlo.read_cost_analysis(analysis)
  assert out["flops"] == flops
  assert out["bytes accessed"] == bytes_


def test_read_memory_analysis():
  assert hlo.read_memory_analysis(None) is None
  stats = types.SimpleNamespace(argument_size_in_bytes=10,
                                output_size_in_bytes=5, temp_size_in_bytes=20,
                                alias_size_in_bytes=5)
  assert hlo.read_memory_analysis(stats) == 30
  stats.peak_memory_in_bytes = 99
  assert hlo.read_memory_analysis(stats) == 99
  stats.peak_memory_in_bytes = 15  # CPU: arguments + outputs only
  assert hlo.read_memory_analysis(stats) == 30
  stats.peak_memory_in_bytes = -1  # unknown: the sum
  assert hlo.read_memory_analysis(stats) == 30
  assert hlo.read_memory_analysis(
      types.SimpleNamespace(peak_memory_in_bytes=7)) == 7


def test_matmul_flops_exact_lowered_and_compiled():
  m, k, n = 8, 16, 4
  f = jax.jit(lambda a, b: a @ b)
  a, b = jnp.ones((m, k)), jnp.ones((k, n))
  lowered, cost, seconds = hlo.lower_and_analyse(f, a, b)
  assert cost.flops == 2 * m * k * n and seconds > 0
  assert not cost.peak_memory_exact
  assert cost.peak_memory >= (m * k + k * n + m * n) * 4
  _, ccost, _ = hlo.compile_and_analyse(lowered)
  assert ccost.flops == 2 * m * k * n
  assert ccost.peak_memory_exact and ccost.peak_memory >= (m * n) * 4


def test_loop_bodies_counted_as_often_as_they_run():
  """XLA counts a lax.map body once; the readers add the other iterations,
  lowered and compiled alike."""
  w = jnp.ones((32, 32))
  xs = jnp.ones((8, 4, 32))
  looped = jax.jit(lambda xs: jax.lax.map(lambda x: x @ w, xs))
  lowered, cost, _ = hlo.lower_and_analyse(looped, xs)
  one = 2 * 4 * 32 * 32
  assert hlo.read_cost_analysis(lowered.cost_analysis())["flops"] == (
      pytest.approx(one, rel=0.05))
  assert cost.flops == pytest.approx(8 * one, rel=0.05)
  assert cost.contraction_flops == 8 * one
  assert cost.scaled(3).flops == pytest.approx(24 * one, rel=0.05)
  _, ccost, _ = hlo.compile_and_analyse(lowered)
  assert ccost.flops == pytest.approx(8 * one, rel=0.05)
  assert cost.inner_loop_iterations == ccost.inner_loop_iterations == 8
  assert ccost.kernels >= 8


def test_features_plus():
  a = CostFeatures(flops=1.0, bytes_accessed=2.0, peak_memory=10.0,
                   peak_memory_exact=True, grouped_conv_flops=1.0)
  b = CostFeatures(flops=3.0, peak_memory=5.0, peak_memory_exact=True)
  c = a.plus(b)
  assert (c.flops, c.bytes_accessed, c.transcendentals, c.peak_memory) == (
      4.0, 2.0, None, 10.0)
  assert c.peak_memory_exact and c.grouped_conv_flops == 1.0
  assert a.scaled(3).grouped_conv_flops == 3.0
  assert a.scaled(3).peak_memory == 10.0  # memory does not scale


def _distinct_features(offset: int) -> CostFeatures:
  """Every field set away from its default, each to its own value."""
  import dataclasses
  values = {}
  for i, f in enumerate(dataclasses.fields(CostFeatures)):
    if f.name == "method":
      values[f.name] = f"m{offset}"
    elif f.name == "peak_memory_exact":
      values[f.name] = True
    else:
      kind = int if type(f.default) is int else float
      values[f.name] = kind(10 * offset + i + 2)
  return CostFeatures(**values)


def test_every_feature_has_its_roles_and_round_trips():
  """A new cost feature reaches the cache rows, the calibration's input
  and the combining rules, or this fails."""
  import dataclasses
  from autontk.costmodel import features
  for f in dataclasses.fields(CostFeatures):
    assert f.metadata.get("combine") in features.COMBINE, f.name
    assert f.metadata.get("merge") in features.MERGE, f.name
    assert isinstance(f.metadata.get("vector"), bool), f.name
  full = _distinct_features(1)
  assert CostFeatures.from_row(full.to_row()) == full
  assert len(full.vector()) == len(features.VECTOR_FIELDS)


def test_every_feature_survives_merge_plus_and_scaled():
  """Each field goes through merging, ``plus`` and ``scaled`` as its
  metadata says: none is reset to its default."""
  import dataclasses
  a, b = _distinct_features(1), _distinct_features(3)
  assert a.scaled(1) == a and a.plus(dataclasses.replace(
      b, **{n: 0.0 for n in features_lib.WORK_FIELDS}, peak_memory=0.0)) == a
  doubled, summed = a.scaled(2), a.plus(b)
  merged = hlo.merge_compiled(a, b)
  for f in dataclasses.fields(CostFeatures):
    mine, other = getattr(a, f.name), getattr(b, f.name)
    combine, merge = f.metadata["combine"], f.metadata["merge"]
    want = {"sum": mine + other if combine == "sum" else None,
            "max": max(mine, other), "all": mine and other,
            "first": mine}[combine]
    assert getattr(summed, f.name) == want, f.name
    assert getattr(doubled, f.name) == (2 * mine if combine == "sum"
                                        else mine), f.name
    if f.name != "flops" or jax.default_backend() == "cpu":
      source = a if merge == "lowered" else b
      assert getattr(merged, f.name) == getattr(source, f.name), f.name


def test_largest_tensor_bytes():
  text = "%0 = foo : tensor<4x8xf32>, tensor<2xf64>, tensor<f32>"
  assert hlo.largest_tensor_bytes(text) == 4 * 8 * 4


# memory ---------------------------------------------------------------------


def test_budget_fraction_and_bytes():
  total, what = memory.device_memory()
  assert total > 0 and what
  half = memory.budget(0.5)
  assert half.bytes == pytest.approx(0.5 * total, rel=0.2)
  assert memory.budget(12345).bytes == 12345
  assert memory.budget(12345).fits(12345)
  assert not memory.budget(12345).fits(12346)
  assert memory.budget(12345).fits(None)


@pytest.mark.parametrize("bad", [0, -1, "1GB", True])
def test_budget_rejects_bad_values(bad):
  with pytest.raises(ValueError, match="memory_budget"):
    memory.budget(bad)


def test_budget_uses_device_stats_when_present():
  dev = types.SimpleNamespace(
      platform="gpu", device_kind="fake",
      memory_stats=lambda: {"bytes_limit": 1000, "bytes_in_use": 200})
  b = memory.budget(None, dev)
  assert b.bytes == pytest.approx(0.9 * 800)
  assert "fake" in b.source


# device constants -----------------------------------------------------------


def test_constants_measured_once_and_stored(tmp_path, monkeypatch):
  calls = []
  fake = DeviceConstants(1e11, 1e10, 1e-5, 1e-7, "cpu", "cpu")
  monkeypatch.setattr(device, "measure",
                      lambda d=None: calls.append(1) or fake)
  assert device.constants() == fake
  assert device.constants() == fake
  assert len(calls) == 1
  stored = json.loads((tmp_path / "device_constants.json").read_text())
  assert device.device_key() in stored
  device._reset_memo()  # a new process: reads the file, does not measure
  assert device.constants() == fake
  assert len(calls) == 1


def test_measure_gives_plausible_numbers():
  c = device.measure(size=256)
  assert c.grouped_conv_flops_per_s > 0 and c.depthwise_conv_flops_per_s > 0
  assert 1e8 < c.flops_per_s < 1e15
  assert 1e8 < c.bytes_per_s < 1e13
  assert 0 < c.call_overhead_s < 0.1
  assert c.loop_iteration_s >= 0


def test_corrupt_constants_file_is_remeasured(tmp_path, monkeypatch):
  (tmp_path / "device_constants.json").write_text("{not json")
  fake = DeviceConstants(1e11, 1e10, 1e-5, 1e-7, "cpu", "cpu")
  monkeypatch.setattr(device, "measure", lambda d=None: fake)
  assert device.constants() == fake


# predictor ------------------------------------------------------------------


def test_roofline_sum_max_and_overheads():
  c = DeviceConstants(1e11, 1e10, 1e-5, 1e-6)
  feats = CostFeatures("m", 1e9, 1e8, 0.0, None)
  assert RooflinePredictor(c, overlap=False).predict(feats) == pytest.approx(
      0.01 + 0.01 + 1e-5)
  assert RooflinePredictor(c, overlap=True).predict(feats) == pytest.approx(
      0.01 + 1e-5)
  host = CostFeatures("m", 0.0, 0.0, 0.0, None, calls=10, loop_iterations=5)
  assert RooflinePredictor(c).predict(host) == pytest.approx(10e-5 + 5e-6)
  trans = CostFeatures("m", 0.0, 0.0, 1e6, None)
  assert RooflinePredictor(c, flops_per_transcendental=10).predict(
      trans) == pytest.approx(1e7 / 1e11 + 1e-5)


def test_unknown_counts_predict_overheads_only():
  c = DeviceConstants(1e11, 1e10, 1e-5, 1e-6)
  assert RooflinePredictor(c).predict(
      CostFeatures("m", None, None, None, None)) == pytest.approx(1e-5)


def test_custom_predictor_satisfies_protocol():
  class Learned:
    def predict(self, features):
      return features.flops or 0.0

  assert isinstance(Learned(), predict.TimePredictor)
  assert not isinstance(object(), predict.TimePredictor)


def test_grouped_and_depthwise_convolutions_are_classified():
  conv = jax.lax.conv_general_dilated
  dn = ("NHWC", "HWIO", "NHWC")
  x = jnp.ones((2, 8, 8, 4))
  plain = jax.jit(lambda x, w: conv(x, w, (1, 1), "SAME",
                                    dimension_numbers=dn))
  _, cost, _ = hlo.lower_and_analyse(plain, x, jnp.ones((3, 3, 4, 6)))
  assert (cost.grouped_conv_flops, cost.depthwise_conv_flops) == (0.0, 0.0)
  small = jax.jit(lambda x, w: conv(x, w, (1, 1), "SAME",
                                    dimension_numbers=dn,
                                    feature_group_count=2))
  _, cost, _ = hlo.lower_and_analyse(small, x, jnp.ones((3, 3, 2, 6)))
  assert cost.depthwise_conv_flops == 2 * (2 * 8 * 8 * 6) * 9 * 2
  assert cost.grouped_conv_flops == 0.0
  # XLA skips padded window positions; this count includes them.
  assert cost.flops <= cost.depthwise_conv_flops <= 1.25 * cost.flops
  assert cost.scaled(3).depthwise_conv_flops == 3 * cost.depthwise_conv_flops
  # Per-example weight gradient of a conv layer: the window is the image.
  def f(w, x):
    return jnp.sum(conv(x[None], w, (1, 1), "SAME", dimension_numbers=dn)**2)
  grads = jax.jit(jax.vmap(jax.grad(f), in_axes=(None, 0)))
  _, cost, _ = hlo.lower_and_analyse(grads, jnp.ones((3, 3, 4, 6)),
                                  jax.random.normal(jax.random.PRNGKey(0),
                                                    x.shape))
  assert cost.grouped_conv_flops > 0 and cost.depthwise_conv_flops == 0.0


def test_roofline_charges_grouped_convolutions_at_their_rate():
  c = DeviceConstants(1e11, 1e10, 0.0, 0.0, grouped_conv_flops_per_s=1e9,
                      depthwise_conv_flops_per_s=1e8)
  p = RooflinePredictor(c)
  feats = CostFeatures(method="m", flops=3e9, bytes_accessed=0.0,
                       transcendentals=0.0, grouped_conv_flops=1e9,
                       depthwise_conv_flops=1e8)
  assert p.predict(feats) == pytest.approx(1.9e9 / 1e11 + 1.0 + 1.0)


def test_stale_constants_entry_is_remeasured(tmp_path, monkeypatch):
  old = {device.device_key(): {"flops_per_s": 1.0, "bytes_per_s": 1.0,
                               "call_overhead_s": 0.0,
                               "loop_iteration_s": 0.0}}
  (tmp_path / "device_constants.json").write_text(json.dumps(old))
  fake = DeviceConstants(1e11, 1e10, 1e-5, 1e-7, "cpu", "cpu", 1e9, 1e8)
  monkeypatch.setattr(device, "measure", lambda d=None: fake)
  assert device.constants() == fake


def test_contraction_flops_counted_from_text():
  cases = [
      (lambda a, b: a @ b, (jnp.ones((8, 16)), jnp.ones((16, 4))), 1024.0),
      (lambda c, d: jnp.einsum("bij,bjk->bik", c, d),
       (jnp.ones((3, 2, 5)), jnp.ones((3, 5, 7))), 2 * 3 * 2 * 7 * 5),
      (lambda a: a @ a, (jnp.ones(16),), 32.0),
      (lambda x, w: jax.lax.conv_general_dilated(
          x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")),
       (jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 6))),
       2 * (2 * 6 * 6 * 6) * 9 * 4),
  ]
  for fn, args, want in cases:
    _, cost, _ = hlo.lower_and_analyse(jax.jit(fn), *args)
    assert cost.contraction_flops == want
    assert cost.flops == pytest.approx(want)


# launch terms ---------------------------------------------------------------


FAKE = DeviceConstants(1e11, 1e10, 1e-5, 1e-7, "cpu", "cpu", 1e9, 1e8, 2e-7)


def test_an_incomplete_entry_is_measured_again(tmp_path, monkeypatch):
  lacking = {k: v for k, v in FAKE.to_dict().items() if k != "kernel_s"}
  (tmp_path / "device_constants.json").write_text(
      json.dumps({device.device_key(): lacking}))
  monkeypatch.setattr(device, "measure", lambda d=None: FAKE)
  assert device.constants() == FAKE
  stored = json.loads((tmp_path / "device_constants.json").read_text())
  assert stored[device.device_key()]["kernel_s"] == FAKE.kernel_s


def test_machine_level_copy_spares_a_new_cache_dir(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(device, "measure",
                      lambda d=None: calls.append(1) or FAKE)
  assert device.constants() == FAKE
  fresh = tmp_path / "fresh"
  monkeypatch.setenv("AUTONTK_CACHE_DIR", str(fresh))
  device._reset_memo()  # a new process with a new cache directory
  assert device.constants() == FAKE
  assert len(calls) == 1
  assert device.device_key() in json.loads(
      (fresh / "device_constants.json").read_text())


def test_measure_launch_gives_plausible_numbers():
  launch = device.measure_launch()
  assert set(launch) == {"call_overhead_s", "kernel_s", "loop_iteration_s"}
  assert 0 < launch["call_overhead_s"] < 0.1
  assert 0 < launch["kernel_s"] < 1e-3
  assert 0 <= launch["loop_iteration_s"] < 1e-3
  for fn, args, _ in device._launch_programs():
    kernels, _ = device.count_launches(jax.jit(fn).lower(*args).compile())
    assert kernels >= 1


def test_roofline_charges_kernels_and_inner_iterations():
  c = DeviceConstants(1e11, 1e10, 1e-5, 1e-6, kernel_s=2e-7)
  p = RooflinePredictor(c)
  base = CostFeatures("m", 0.0, 0.0, 0.0)
  feats = CostFeatures("m", 0.0, 0.0, 0.0, kernels=1000,
                       inner_loop_iterations=20, loop_iterations=4)
  assert p.predict(feats) - p.predict(base) == pytest.approx(
      1000 * 2e-7 + 24 * 1e-6)
  assert p.launch(feats) == pytest.approx(1e-5 + 2e-4 + 24e-6)
  assert "kernel 0.2 µs" in p.describe()


def test_small_kernels_move_bytes_at_the_resident_bandwidth():
  c = DeviceConstants(1e11, 1e9, 0.0, 0.0, resident_bytes_per_s=1e10)
  p = RooflinePredictor(c)
  feats = CostFeatures("m", 0.0, 3e9, 0.0, resident_bytes=2e9)
  assert p.predict(feats) == pytest.approx(1e9 / 1e9 + 2e9 / 1e10)
  unmeasured = DeviceConstants(1e11, 1e9, 0.0, 0.0)  # no resident bandwidth
  assert RooflinePredictor(unmeasured).predict(feats) == pytest.approx(3.0)


def test_resident_share_of_a_small_and_a_large_kernel():
  small = jax.jit(lambda a: jnp.tanh(a) * 2.0)
  _, f, _ = hlo.lower_and_analyse(small, jnp.ones((256, 256)))
  assert f.resident_bytes == pytest.approx(f.bytes_accessed)
  _, cf, _ = hlo.compile_and_analyse(small.lower(jnp.ones((256, 256))))
  assert cf.resident_bytes == pytest.approx(cf.bytes_accessed)
  big = jax.jit(lambda a: a @ a)
  lowered = big.lower(jax.ShapeDtypeStruct((2048, 2048), jnp.float32))
  assert hlo.analyse_lowered(lowered).resident_bytes == 0.0
