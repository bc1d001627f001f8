"""The one recorder: machine facts, the machine tag, JSON and Markdown files.

Every suite's result is a JSON-able dict. :func:`save` stamps it with the
machine (:func:`machine_info`), the tag, the mode and the date, and writes
``bench/results/<tag>/<suite>.json``; :func:`write_markdown` writes the
suite's table beside it as ``<suite>.md``; :func:`update_index` rewrites
``bench/results/<tag>/README.md``, one line per recorded suite.

The tag names the machine: ``cpu-<cores>core`` on CPU,
``<backend>-<device kind>`` on an accelerator (``gpu-nvidia-h100-80gb-hbm3``).

>>> machine_tag({"backend": "cpu", "cpu_count": 2, "device_kind": "cpu"})
'cpu-2core'
"""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any, Callable

import jax

import autontk

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def machine_info() -> dict[str, Any]:
  """Backend, device, CPU, memory and library versions of this machine."""
  dev = jax.devices()[0]
  cpu = ""
  try:
    with open("/proc/cpuinfo") as fh:
      cpu = next((l.split(":", 1)[1].strip() for l in fh
                  if l.startswith("model name")), "")
  except OSError:
    pass
  mem = None
  try:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError):
    pass
  return {"backend": jax.default_backend(), "device_kind": dev.device_kind,
          "device_count": jax.device_count(), "cpu": cpu or
          platform.machine(), "cpu_count": os.cpu_count(),
          "memory_bytes": mem, "python": platform.python_version(),
          "jax": jax.__version__, "autontk": autontk.__version__,
          "platform": platform.platform()}


def machine_tag(info: dict[str, Any]) -> str:
  """The results folder of a machine: ``cpu-<n>core`` or ``<backend>-<kind>``."""
  if info["backend"] == "cpu":
    return f"cpu-{info['cpu_count']}core"
  kind = "".join(c if c.isalnum() else "-" for c in info["device_kind"].lower())
  return f"{info['backend']}-{kind}".strip("-")


def results_dir(tag: str, root: str = RESULTS) -> str:
  path = os.path.join(root, tag)
  os.makedirs(path, exist_ok=True)
  return path


def stamp(res: dict[str, Any], *, suite: str, tag: str,
          info: dict[str, Any], quick: bool) -> dict[str, Any]:
  """``res`` with the fields every recorded result carries."""
  res.update(suite=suite, tag=tag, machine=info, quick=quick,
             date_utc=time.strftime("%Y-%m-%d %H:%M", time.gmtime()))
  return res


def save(out_dir: str, suite: str, res: dict[str, Any]) -> str:
  """Writes ``<out_dir>/<suite>.json``; returns its path."""
  path = os.path.join(out_dir, f"{suite}.json")
  with open(path, "w") as fh:
    json.dump(res, fh, indent=1, default=str)
  return path


def load(out_dir: str, suite: str) -> dict[str, Any] | None:
  path = os.path.join(out_dir, f"{suite}.json")
  try:
    with open(path) as fh:
      return json.load(fh)
  except (OSError, ValueError):
    return None


def header(res: dict[str, Any]) -> str:
  """One line: machine, mode and date of a recorded result."""
  m = res.get("machine") or {}
  device = (m.get("cpu") if m.get("backend") == "cpu"
            else m.get("device_kind")) or "?"
  return (f"Machine `{res.get('tag', '?')}`: {m.get('backend', '?')}, "
          f"{device}, {m.get('cpu_count', '?')} cores; jax "
          f"{m.get('jax', '?')}; {'quick' if res.get('quick') else 'full'} "
          f"mode; {res.get('date_utc', '?')} UTC.")


def write_markdown(out_dir: str, suite: str, res: dict[str, Any],
                   render: Callable[[dict[str, Any]], str]) -> str:
  """Writes ``<out_dir>/<suite>.md``: a header line, then ``render(res)``."""
  text = f"# `{suite}`\n\n{header(res)}\n\n{render(res).rstrip()}\n"
  with open(os.path.join(out_dir, f"{suite}.md"), "w") as fh:
    fh.write(text)
  return text


def update_index(out_dir: str, lines: dict[str, str]) -> None:
  """``<out_dir>/README.md``: one line per recorded suite (``lines``)."""
  tag = os.path.basename(os.path.normpath(out_dir))
  body = [f"# Results on `{tag}`", "",
          "The latest run of each suite on this machine (`python -m bench "
          f"--tag {tag}`).", ""]
  body += [f"* [`{name}`]({name}.md): {line}"
           for name, line in lines.items()]
  with open(os.path.join(out_dir, "README.md"), "w") as fh:
    fh.write("\n".join(body) + "\n")
