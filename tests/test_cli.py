"""The ``autontk`` command, tried the way a new user would."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from autontk import Plan, cli

FACTORY = textwrap.dedent("""
    import jax, jax.numpy as jnp

    def build(width=16, n=4):
      k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      params = {"w": jax.random.normal(k1, (3, width)),
                "v": jax.random.normal(k2, (width, 2))}
      f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
      return {"f": f, "params": params,
              "x1": jax.random.normal(k3, (n, 3)), "vmap_axes": 0}

    def as_tuple():
      m = build()
      return m["f"], m["params"], m["x1"]

    def broken():
      return {"f": None}

    def checkpoints(n=6):
      m = build(n=n)
      m["params_b"] = jax.tree.map(lambda a: 1.1 * a, m["params"])
      m["y"] = jnp.arange(2 * n, dtype=jnp.float32).reshape(n, 2)
      return m
""")


@pytest.fixture
def env(tmp_path, monkeypatch):
  """A fresh cache and a model file, as a newcomer would have them."""
  (tmp_path / "mymodel.py").write_text(FACTORY)
  monkeypatch.setenv("AUTONTK_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setenv("AUTONTK_JAX_CACHE", "0")
  monkeypatch.chdir(tmp_path)
  return tmp_path


def _run(capsys, *argv):
  rc = cli.main(list(argv))
  out = capsys.readouterr()
  return rc, out.out, out.err


def test_help_explains_the_commands(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  for word in ("tune", "report", "cache", "calibrate", "AUTONTK_CACHE_DIR",
               "Examples"):
    assert word in out
  with pytest.raises(SystemExit):
    cli.main(["tune", "--help"])
  out = capsys.readouterr().out
  assert "MODULE:FACTORY" in out and '"x1"' in out and "--budget" in out
  assert cli.main([]) == 0  # no command: help, not a traceback


@pytest.mark.parametrize("argv, message", [
    (["tune"], "Give a MODEL"),
    (["tune", "mymodel"], "MODULE:FACTORY"),
    (["tune", "nosuchmodule:build"], "Cannot import module 'nosuchmodule'"),
    (["tune", "mymodel:nope"], "has no 'nope'; callables in it: as_tuple"),
    (["tune", "mymodel:broken"], "without params, x1"),
    (["tune", "mymodel:build", "--set", "depth=3"], "--set names"),
    (["tune", "./missing.py:build"], "No such file"),
    (["tune", "--suite", "--only", "nope"], "the suite has: mlp_tanh"),
    (["report", "abc123"], "No cached signature"),
    (["report", "not-hex"], "hex digest"),
    (["cache", "show", "ffff"], "No cached signature"),
    (["cache", "clear"], "--yes"),
    (["calibrate"], "autontk tune --suite"),
])
def test_errors_are_one_clear_line(env, capsys, argv, message):
  rc, _, err = _run(capsys, *argv)
  assert rc == 2
  assert message in err and "Traceback" not in err


def test_bad_option_values_are_rejected_by_argparse(env, capsys):
  for argv in (["tune", "m:f", "--set", "3=4"],
               ["tune", "m:f", "--trace-axes", "x"],
               ["tune", "m:f", "--vmap-axes", "batch"]):
    with pytest.raises(SystemExit) as e:
      cli.main(argv)
    assert e.value.code == 2
    assert "expected" in capsys.readouterr().err


@pytest.mark.parametrize("question", ["solve", "times", "eigsh"])
def test_tune_times_both_routes(env, capsys, question):
  """`tune --routes` runs both routes of a question (their answers agree)
  and shows them beside the priced times and auto's pick."""
  rc, out, err = _run(capsys, "tune", "mymodel:build", "--n1", "48",
                      "--routes", question, "--k", "2", "--rhs", "2",
                      "--repeats", "1", "--json")
  assert rc == 0, err
  res = json.loads(out)
  assert res["question"] == question and res["m"] == 48
  for r in ("dense", "matrix_free"):
    assert res["timed"][r]["best_s"] > 0 and res["priced"][r + "_s"] > 0
  assert res["auto"] in ("dense", "matrix_free")
  assert res["regret"] >= 1.0 and res["rel_diff"] < 1e-2
  rc, out, err = _run(capsys, "tune", "mymodel:build", "--n1", "48",
                      "--routes", question, "--k", "2", "--repeats", "0")
  assert rc == 0, err
  assert "priced s" in out and "timed s" in out and "auto picks" in out
  assert "matrix-free plan:" in out


def test_tune_routes_rejects_bad_options(env, capsys):
  rc, _, err = _run(capsys, "tune", "mymodel:build", "--routes", "solve",
                    "--tol", "2")
  assert rc == 2 and "--tol" in err


def test_tune_report_and_cache_commands(env, capsys):
  rc, out, err = _run(capsys, "tune", "mymodel:build", "--set", "width=8",
                      "--n1", "3", "--budget", "30", "--trials", "3",
                      "--no-progress", "--json")
  assert rc == 0, err
  tuned = json.loads(out)
  digest = tuned["signature"]
  assert len(digest) == 64 and tuned["plan"]
  candidates = tuned["report"]["estimates"]
  measured = [c for c in candidates if c["measured_time"]]
  assert len(measured) == 3  # --trials 3: the three best predicted
  assert len(candidates) > 3

  rc, out, _ = _run(capsys, "cache", "ls")
  assert rc == 0 and digest[:12] in out and "tuned" in out
  assert "float32[3, 3]" in out  # --n1 3 resized the batch
  rc, out, _ = _run(capsys, "cache", "ls", "--json")
  assert [e["signature"] for e in json.loads(out)] == [digest]

  rc, out, _ = _run(capsys, "cache", "show", digest[:8])
  assert rc == 0 and tuned["plan"] in out and "measured" in out

  plot = env / "report.png"
  rc, out, _ = _run(capsys, "report", digest[:8], "--json", "--plot",
                    str(plot))
  report = json.loads(out)
  assert rc == 0 and Plan.from_dict(report["chosen"]).describe() == (
      tuned["plan"])
  assert report["source"] == "tuned" and len(report["estimates"]) >= 2
  assert plot.stat().st_size > 1000
  rc, out, _ = _run(capsys, "report", digest[:8])
  assert "*" in out and "predicted ms" in out and "measured ms" in out

  # The same model named as a factory reports the same cached signature.
  rc, out, _ = _run(capsys, "report", "mymodel:build", "--set", "width=8",
                    "--n1", "3", "--json")
  assert rc == 0 and json.loads(out)["signature"] == digest

  export = env / "plans.json"
  rc, out, _ = _run(capsys, "cache", "export", str(export))
  assert rc == 0 and "Exported 1" in out
  rc, out, _ = _run(capsys, "cache", "clear", "--yes")
  assert "Removed 1" in out
  rc, out, _ = _run(capsys, "cache", "ls")
  assert "No plans cached" in out
  rc, out, _ = _run(capsys, "cache", "import", str(export))
  assert rc == 0 and "Imported 1" in out
  rc, out, _ = _run(capsys, "cache", "clear", digest[:10])
  assert "Removed 1" in out
  rc, _, err = _run(capsys, "cache", "import", str(env / "mymodel.py"))
  assert rc == 2 and "Cannot read plan file" in err


@pytest.mark.slow
def test_tune_a_tuple_factory_and_the_suite(env, capsys):
  rc, out, err = _run(capsys, "tune", "mymodel:as_tuple", "--trace-axes",
                      "none", "--vmap-axes", "none", "--budget", "20",
                      "--trials", "2", "--no-progress")
  assert rc == 0, err
  assert "Cached under signature" in out
  rc, out, err = _run(capsys, "tune", "--suite", "--only", "mlp_tanh",
                      "--set", "n=4", "--set", "width=16", "--vmap-axes",
                      "none", "--budget", "20",
                      "--no-progress", "--trials", "2")
  assert rc == 0, err
  assert "[1/1] mlp_tanh" in out and "Tuned 1 models" in out


@pytest.mark.subprocess
def test_console_script_end_to_end(env):
  exe = os.path.join(os.path.dirname(sys.executable), "autontk")
  cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m",
                                           "autontk.cli"]
  run_env = {**os.environ, "JAX_PLATFORMS": "cpu", "AUTONTK_JAX_CACHE": "1"}
  out = subprocess.run(cmd + ["tune", "./mymodel.py:build", "--budget", "20",
                              "--trials", "2", "--vmap-axes", "none",
                              "--no-progress"],
                       capture_output=True, text=True, env=run_env,
                       timeout=300, cwd=env)
  assert out.returncode == 0, out.stderr
  assert "Cached under signature" in out.stdout
  assert (env / "cache" / "plans.sqlite").exists()
  assert (env / "cache" / "jax").is_dir()  # compilation cache beside it
  out = subprocess.run(cmd + ["cache", "ls"], capture_output=True, text=True,
                       env=run_env, timeout=120, cwd=env)
  assert out.returncode == 0 and "1 plans in" in out.stdout


def test_report_of_a_model_not_cached_yet(env, capsys):
  rc, out, err = _run(capsys, "report", "mymodel:build", "--vmap-axes",
                      "none", "--json")
  assert rc == 0, err
  doc = json.loads(out)
  assert doc["chosen"] and doc["source"] in (None, "model")
  assert len(doc["estimates"]) >= 2
  assert all(c["predicted_time"] for c in doc["estimates"] if c["feasible"])


def test_diagnose_prints_each_diagnostic_whole_and_per_group(env, capsys):
  rc, out, _ = _run(capsys, "diagnose", "mymodel:checkpoints", "--k", "3",
                    "--plot", "spectrum.png")
  assert rc == 0
  for quantity in ("condition number", "trace", "effective rank",
                   "alignment", "kernel distance", "top eigenvalues"):
    assert quantity in out, quantity
  # One group per layer: the two weight matrices, each with its own rows.
  assert " w " in out and " v " in out and "exact" in out
  assert (env / "spectrum.png").stat().st_size > 0


def _diagnosed(out):
  """``{(quantity, group): (value, error)}`` from diagnose's table (fixed
  columns: quantity 25, group 14, value 12, error 12)."""
  rows = {}
  for line in out.splitlines()[1:]:
    if line.startswith("top eigenvalues"):
      break
    error = line[54:66].strip()
    rows[(line[:25].strip(), line[26:40].strip())] = (
        float(line[41:53]), 0.0 if error == "exact" else float(error))
  return rows


def test_diagnose_matrix_free_agrees_with_dense(env, capsys):
  got = {}
  for route in ("dense", "matrix-free"):
    rc, out, _ = _run(capsys, "diagnose", "mymodel:checkpoints", "--k", "2",
                      "--route", route)
    assert rc == 0 and f"{route}, " in out
    got[route] = _diagnosed(out)
  assert set(got["dense"]) == set(got["matrix-free"])
  for key, (value, _) in got["dense"].items():
    estimate, error = got["matrix-free"][key]
    # Within the stated error (4 sigma) and a rounding floor.
    assert abs(estimate - value) <= 4 * error + 1e-3 * abs(value), key


def test_diagnose_rejects_options_it_cannot_honour(env, capsys):
  with pytest.raises(SystemExit):
    cli.main(["diagnose", "mymodel:build", "--route", "sideways"])
  rc, _, err = _run(capsys, "diagnose", "mymodel:build",
                    "--diagonal-axes", "0")
  assert rc != 0 and "diagonal_axes" in err
