"""The SQLite plan cache: round trips, processes, corruption, read-only."""

import json
import os
import pathlib
import shutil
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from autontk import BatchChunking, Implementation, Plan, _paths
from autontk._plan import plan_from_json, plan_to_json
from autontk.costmodel import CostEstimate, CostFeatures
from autontk.costmodel.measurement import Timing
from autontk.plancache import PlanCache, PlanCacheWarning

JC = Plan(Implementation.JACOBIAN_CONTRACTION)
NVP = Plan(Implementation.NTK_VECTOR_PRODUCTS)
SIG = "ab" * 32
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "AUTONTK_JAX_CACHE": "0"}


def _cache(tmp_path, **kw):
  return PlanCache(tmp_path, jax_compilation_cache=False, **kw)


def _chunked_plan():
  return Plan(Implementation.NTK_VECTOR_PRODUCTS,
              chunking=BatchChunking(16, "host"))


@pytest.mark.compat
def test_plan_json_round_trip():
  plan = _chunked_plan()
  assert plan_from_json(plan_to_json(plan)) == plan
  assert plan_from_json(plan_to_json(JC)) == JC
  assert plan_to_json(plan) == plan_to_json(_chunked_plan())


def test_plan_json_refuses_types_outside_autontk():
  text = json.dumps({"implementation": "jacobian_contraction",
                     "config": {"type": "os:system", "fields": {}},
                     "chunking": None})
  with pytest.raises(ValueError, match="not a method config or chunking"):
    plan_from_json(text)


def _full_estimate() -> CostEstimate:
  """A candidate with every field set: features, timing, a chunked plan."""
  import dataclasses
  features = CostFeatures(**{
      f.name: (True if f.name == "peak_memory_exact" else "m"
               if f.name == "method" else 3 if type(f.default) is int
               else 3.5) for f in dataclasses.fields(CostFeatures)})
  timing = Timing(median_s=2e-3, min_s=1e-3, repeats=7, compile_s=0.25,
                  stopped_early=True, confirmed_s=1.5e-3)
  return CostEstimate(_chunked_plan(), features, source="compiled",
                      analysis_time=0.1, compile_time=0.2,
                      predicted_time=1e-3, measured_time=1.5e-3,
                      feasible=False, reason="over budget", timing=timing)


def test_every_stored_record_round_trips_through_its_one_codec(tmp_path):
  """A plan, a timing, an estimate: each has one encoding, and the cache's
  rows are that encoding (only the source says where it was read from)."""
  import dataclasses
  est = _full_estimate()
  assert plan_from_json(plan_to_json(est.plan)) == est.plan
  assert Timing.from_dict(json.loads(json.dumps(est.timing.to_dict()))) == (
      est.timing)
  assert CostEstimate.from_dict(json.loads(json.dumps(est.to_dict()))) == est
  cache = _cache(tmp_path)
  cache.record_candidates(SIG, [est])
  (back,) = cache.candidates(SIG)
  assert back == dataclasses.replace(est, source="cache")
  ((sig, measured),) = cache.measurements()
  assert sig == SIG and measured == back


def test_an_unmeasured_row_keeps_the_stored_measurement(tmp_path):
  import dataclasses
  cache = _cache(tmp_path)
  est = dataclasses.replace(_full_estimate(), feasible=True, reason=None)
  cache.record_candidates(SIG, [est])
  again = dataclasses.replace(est, predicted_time=5e-3, measured_time=None,
                              timing=None)
  cache.record_candidates(SIG, [again])
  (back,) = cache.candidates(SIG)
  assert back.predicted_time == 5e-3
  assert (back.measured_time, back.timing) == (est.measured_time, est.timing)


@pytest.mark.compat
def test_store_lookup_candidates_and_clear(tmp_path):
  cache = _cache(tmp_path)
  assert cache.lookup(SIG) is None
  plan = _chunked_plan()
  rows = [CostEstimate(plan, CostFeatures(flops=1e6, blocks=4),
                       predicted_time=2e-3, measured_time=1e-3),
          CostEstimate(JC, predicted_time=1e-3, measured_time=5e-3),
          CostEstimate(NVP, feasible=False, reason="over budget")]
  assert cache.store(SIG, plan, source="tuned", candidates=rows,
                     planning_s=0.5)
  assert cache.lookup(SIG) == plan
  assert cache.source(SIG) == "tuned"
  entry = cache.entry(SIG)
  assert entry["device_kind"] and entry["versions"]["autontk"]
  got = cache.candidates(SIG)
  assert [e.plan for e in got] == [plan, JC, NVP]
  assert got[0].features.blocks == 4 and got[0].flops == 1e6
  assert not got[2].feasible and got[2].reason == "over budget"
  assert len(cache.measurements()) == 2
  assert cache.measurements(device_kind="no such device") == []
  # Storing again keeps the creation time and updates the plan.
  created = entry["created"]
  cache.store(SIG, JC)
  assert cache.lookup(SIG) == JC and cache.entry(SIG)["created"] == created
  assert cache.resolve(SIG[:6]) == SIG
  with pytest.raises(KeyError, match="No cached signature"):
    cache.resolve("ffff")
  with pytest.raises(ValueError, match="hex digest"):
    cache.resolve("xyz")
  assert cache.clear(SIG) == 1
  assert cache.lookup(SIG) is None and cache.candidates(SIG) == []


def test_bad_arguments(tmp_path):
  cache = _cache(tmp_path)
  with pytest.raises(ValueError, match="`source`"):
    cache.store(SIG, JC, source="guess")
  with pytest.raises(TypeError, match="`signature`"):
    cache.lookup(123)


def test_export_and_import(tmp_path):
  a = _cache(tmp_path / "a")
  a.store(SIG, NVP, source="tuned",
          candidates=[CostEstimate(NVP, measured_time=1e-3)])
  a.store("cd" * 32, JC)
  path = tmp_path / "plans.json"
  assert a.export(path) == 2
  b = _cache(tmp_path / "b")
  b.store("cd" * 32, NVP, source="tuned")  # tuned beats imported
  assert b.import_file(path) == 1
  assert b.lookup(SIG) == NVP and b.source(SIG) == "tuned"
  assert b.lookup("cd" * 32) == NVP
  assert len(b.measurements()) == 1
  (tmp_path / "junk.json").write_text("{}")
  with pytest.raises(ValueError, match="not an autontk plan export"):
    b.import_file(tmp_path / "junk.json")


def test_default_directory_honours_env(monkeypatch, tmp_path):
  monkeypatch.setenv("AUTONTK_CACHE_DIR", str(tmp_path / "x"))
  assert _paths.cache_directory() == tmp_path / "x"
  assert PlanCache(jax_compilation_cache=False).path.parent == tmp_path / "x"


def test_jax_compilation_cache_beside_plans(tmp_path):
  import jax

  from autontk.plancache import compilation
  before = jax.config.jax_compilation_cache_dir
  try:
    jax.config.update("jax_compilation_cache_dir", None)
    cache = PlanCache(tmp_path, jax_compilation_cache=True)
    assert jax.config.jax_compilation_cache_dir is None  # no side effect
    compilation.use_beside(_cache(tmp_path / "off"))
    assert jax.config.jax_compilation_cache_dir is None
    compilation.use_beside(cache)  # where a plan is compiled
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax")
    compilation.use_beside(PlanCache(tmp_path / "other",
                                     jax_compilation_cache=True))
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax")
  finally:
    jax.config.update("jax_compilation_cache_dir", before)


def test_corrupt_database_is_moved_aside(tmp_path):
  cache = _cache(tmp_path)
  cache.store(SIG, JC)
  for suffix in ("-wal", "-shm"):
    pathlib.Path(str(cache.path) + suffix).unlink(missing_ok=True)
  cache.path.write_bytes(b"this is not sqlite " * 500)
  fresh = _cache(tmp_path)
  with pytest.warns(PlanCacheWarning, match="corrupt; moved it to") as got:
    assert fresh.lookup(SIG) is None
    assert fresh.store(SIG, NVP)
    assert _cache(tmp_path).lookup(SIG) == NVP  # another object, same dir
  assert len(got) == 1  # one warning per cause and directory
  aside = list(tmp_path.glob("plans.sqlite.corrupt-*"))
  assert aside and aside[0].read_bytes().startswith(b"this is not sqlite")


def test_a_database_in_another_format_is_moved_aside(tmp_path):
  cache = _cache(tmp_path)
  conn = sqlite3.connect(cache.path)
  conn.execute("CREATE TABLE candidates (signature TEXT, blocks INTEGER)")
  conn.commit()
  conn.close()
  with pytest.warns(PlanCacheWarning, match="another format; moved it to"):
    assert cache.store(SIG, NVP)
  assert _cache(tmp_path).lookup(SIG) == NVP
  aside = list(tmp_path.glob("plans.sqlite.corrupt-*"))
  assert aside and "blocks" in sqlite3.connect(aside[0]).execute(
      "SELECT sql FROM sqlite_master").fetchone()[0]


def test_locked_database_warns_and_goes_on(tmp_path):
  cache = _cache(tmp_path, timeout_s=0.2)
  cache.store(SIG, JC)
  holder = sqlite3.connect(cache.path, isolation_level=None)
  holder.execute("BEGIN EXCLUSIVE")
  try:
    with pytest.warns(PlanCacheWarning, match="locked"):
      assert cache.store("cd" * 32, NVP) is False
  finally:
    holder.execute("ROLLBACK")
    holder.close()
  assert cache.store("cd" * 32, NVP)


def test_unwritable_directory_warns(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  cache = _cache(blocker / "cache")  # a directory below a regular file
  with pytest.warns(PlanCacheWarning, match="cannot use the directory") as got:
    assert cache.store(SIG, JC) is False
    assert cache.store(SIG, NVP) is False
    assert _cache(blocker / "cache").store(SIG, JC) is False
  assert cache.lookup(SIG) is None
  assert len(got) == 1


@pytest.mark.subprocess
def test_read_only_cache_directory(tmp_path):
  cache = _cache(tmp_path / "ro")
  cache.store(SIG, JC)
  script = textwrap.dedent(f"""
      import warnings
      from autontk import Plan, Implementation
      from autontk.plancache import PlanCache, PlanCacheWarning
      c = PlanCache({str(tmp_path / "ro")!r}, jax_compilation_cache=False)
      with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        print("lookup", c.lookup({SIG!r}).implementation.name)
        print("store", c.store("cd" * 32, Plan(Implementation(2))))
      print("warned", any(issubclass(x.category, PlanCacheWarning)
                          for x in w))
  """)
  os.chmod(tmp_path / "ro", 0o555)
  os.chmod(cache.path, 0o444)
  cmd = [sys.executable, "-c", script]
  if os.geteuid() == 0:
    # Root ignores file modes; without CAP_DAC_OVERRIDE it obeys them.
    if shutil.which("setpriv") is None:
      pytest.skip("running as root without setpriv")
    cmd = ["setpriv", "--bounding-set",
           "-dac_override,-dac_read_search,-fowner"] + cmd
  try:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                         env=ENV)
  finally:
    os.chmod(tmp_path / "ro", 0o755)
  assert out.returncode == 0, out.stderr
  assert "lookup JACOBIAN_CONTRACTION" in out.stdout
  assert "store False" in out.stdout and "warned True" in out.stdout


WRITER = textwrap.dedent("""
    import sys
    from autontk import Plan, Implementation
    from autontk.costmodel import CostEstimate
    from autontk.plancache import PlanCache
    c = PlanCache(sys.argv[1], jax_compilation_cache=False)
    tag = int(sys.argv[2])
    for i in range(40):
      plan = Plan(Implementation(1 + (i + tag) % 2))
      assert c.store(f"{tag:02x}{i:062x}", plan, candidates=[
          CostEstimate(plan, measured_time=1e-3 * i)])
      assert c.store("ee" * 32, plan)  # both fight over one row too
    print("ok")
""")


@pytest.mark.subprocess
def test_two_processes_writing_at_once_lose_nothing(tmp_path):
  procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path),
                             str(tag)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
           for tag in (1, 2)]
  outs = [p.communicate(timeout=180) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0 and "ok" in out, err
    assert "PlanCacheWarning" not in err
  cache = _cache(tmp_path)
  assert len(cache.entries()) == 81
  assert len(cache.measurements()) == 80
  conn = sqlite3.connect(cache.path)
  assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
  conn.close()


SECOND_PROCESS = textwrap.dedent("""
    import json, time
    import numpy as np
    import jax, jax.numpy as jnp
    from jax import monitoring
    import autontk
    from autontk.auto import planner

    counts = {"planned": 0, "compiles": 0, "jax_cache_hits": 0}
    original = planner.Planner.plan_call

    def counted(self, *a, **kw):
      counts["planned"] += 1
      return original(self, *a, **kw)

    planner.Planner.plan_call = counted

    def on_event(event, **kw):
      if event == "/jax/compilation_cache/compile_requests_use_cache":
        counts["compiles"] += 1
      elif event == "/jax/compilation_cache/cache_hits":
        counts["jax_cache_hits"] += 1

    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(4, 32)).astype("float32"),
              "v": rng.normal(size=(32, 3)).astype("float32")}
    x = rng.normal(size=(6, 4)).astype("float32")

    def f(p, x):
      return jnp.tanh(x @ p["w"]) @ p["v"]

    ntk = autontk.ntk_fn(f, vmap_axes=0)
    monitoring.register_event_listener(on_event)
    t0 = time.perf_counter()
    k = np.asarray(ntk(x, None, params))
    counts["seconds"] = time.perf_counter() - t0
    counts["plan"] = ntk.plan(x, None, params).describe()
    counts["kernel"] = k.tolist()
    print("RESULT", json.dumps(counts))
""")


def _second_process_run(cache_dir):
  env = {**ENV, "AUTONTK_CACHE_DIR": str(cache_dir), "AUTONTK_JAX_CACHE": "1"}
  out = subprocess.run([sys.executable, "-c", SECOND_PROCESS],
                       capture_output=True, text=True, timeout=300, env=env)
  assert out.returncode == 0, out.stderr
  line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


@pytest.mark.compat
@pytest.mark.subprocess
def test_second_process_gets_the_plan_without_compiling_candidates(tmp_path):
  first = _second_process_run(tmp_path)
  assert first["planned"] == 1 and first["compiles"] >= 1
  cache = _cache(tmp_path)
  (entry,) = cache.entries()
  assert entry["source"] == "model" and entry["describe"] == first["plan"]
  assert len(cache.candidates(entry["signature"])) > 1  # estimates kept

  second = _second_process_run(tmp_path)
  assert second["planned"] == 0  # the planner never ran
  # Only the chosen plan's executable (read from JAX's disk cache), and
  # the once-per-process probe of the XLA options (a tiny program).
  assert second["compiles"] <= 2
  assert second["jax_cache_hits"] == 1
  assert second["plan"] == first["plan"]
  assert second["kernel"] == first["kernel"]


def test_planner_options_key_the_cache_and_custom_predictors_stay_out(
    tmp_path):
  import jax.numpy as jnp
  import numpy as np

  import autontk
  from autontk.auto.planner import signature_of

  def f(p, x):
    return jnp.tanh(x @ p)

  def sig(ntk):
    return signature_of(ntk, x, None, p, {}, ntk.planner.cost_model.options)

  p, x = np.ones((3, 4), "float32"), np.ones((5, 3), "float32")
  default = sig(autontk.ntk_fn(f))
  budget = sig(autontk.ntk_fn(f, memory_budget=0.25))
  assert default.digest != budget.digest
  assert "memory_budget" in str(budget.parts["extra"])
  assert "extra" not in default.parts

  class Constant:
    def predict(self, features):
      return 1.0

  cache = _cache(tmp_path)
  ntk = autontk.ntk_fn(f, predictor=Constant(), plan_cache=cache)
  ntk(x, None, p)
  assert cache.entries() == []  # an experiment, not a plan to remember
  ntk = autontk.ntk_fn(f, memory_budget=0.25, plan_cache=cache)
  ntk(x, None, p)
  (entry,) = cache.entries()
  assert entry["signature"] == budget.digest
  with pytest.raises(TypeError, match="plan_cache"):
    autontk.ntk_fn(f, plan_cache="here")


def test_committed_example_export_still_imports(tmp_path):
  example = pathlib.Path(__file__).parents[1] / "cache" / "example-cpu.json"
  cache = _cache(tmp_path)
  assert cache.import_file(example) == 1
  (entry,) = cache.entries()
  assert cache.lookup(entry["signature"]) is not None
  assert entry["source"] == "tuned" and entry["device_kind"] == "cpu"
  assert len(cache.measurements()) >= 3


@pytest.mark.parametrize("problem", ["corrupt", "not a directory"])
def test_one_warning_per_cause_for_a_whole_call(tmp_path, monkeypatch,
                                                problem):
  import warnings

  import jax.numpy as jnp

  import autontk
  if problem == "corrupt":
    directory = tmp_path / "cache"
    directory.mkdir()
    (directory / "plans.sqlite").write_bytes(b"not sqlite " * 500)
  else:
    (tmp_path / "file").write_text("")
    directory = tmp_path / "file" / "cache"
  monkeypatch.setenv("AUTONTK_CACHE_DIR", str(directory))
  f = lambda p, x: jnp.tanh(x @ p)  # noqa: E731
  x, p = jnp.ones((2, 3)), jnp.ones((3, 2))
  with warnings.catch_warnings(record=True) as got:
    warnings.simplefilter("always")
    ntk = autontk.ntk_fn(f)
    ntk(x, None, p)
    ntk.report(x, None, p)
    autontk.ntk_fn(f, memory_budget=0.5)(x, None, p)
  mine = [w for w in got if issubclass(w.category, PlanCacheWarning)]
  assert len(mine) == 1, [str(w.message) for w in mine]
