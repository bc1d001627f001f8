"""Models for the command line: factories, their contract, size overrides.

``MODEL`` on the command line is a *factory* (``MODULE:FACTORY`` or
``path/file.py:FACTORY``) returning the model as a dict (see
:data:`FACTORY_HELP`); :func:`build_model` checks it, :func:`apply_overrides`
applies the command line's NTK options and batch sizes, and
:func:`ntk_options` gives what ``ntk_fn`` and ``tune`` take.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp

from autontk import adapters
from autontk._options import NTK_OPTION_NAMES
from autontk.cli.errors import CliError

FACTORY_HELP = """\
MODEL is MODULE:FACTORY, e.g. `mypkg.models:make_mlp` or `./model.py:build`
(the current directory is importable). FACTORY is called with the --set
values as keyword arguments and must return either a dict

    {"f": f, "params": params, "x1": x1,            # required
     "x2": None, "kwargs": {},                       # optional
     "trace_axes": (-1,), "diagonal_axes": (),       # optional NTK options
     "vmap_axes": 0,
     "wrt": None, "groups": None,                    # optional kernel options
     "pseudo_axes": None, "precision": None}

or a tuple (f, params, x1) or (f, params, x1, x2), where f(params, x,
**kwargs) is the network, or a model object autontk.ntk_fn takes (an
nnx.Module, an equinox Module, autontk.adapters.linen(module, variables)...;
params then in that library's form). The kernel options are those of
autontk.ntk_fn. Command-line NTK options override the factory's.
The bundled models are examples: `autontk tune autontk.suite:mlp_tanh`.
"""


def load_factory(spec: str):
  """``MODULE:FACTORY`` or ``path/file.py:FACTORY`` -> the factory."""
  module_name, sep, attr = spec.rpartition(":")
  if not sep or not module_name or not attr:
    raise CliError(f"MODEL must look like MODULE:FACTORY (e.g. "
                   f"mypkg.models:make_mlp or ./model.py:build); got {spec!r}.")
  if module_name.endswith(".py") or os.sep in module_name:
    path = pathlib.Path(module_name)
    if not path.is_file():
      raise CliError(f"No such file: {path}.")
    mod_spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(mod_spec)
    try:
      mod_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - shown to the user
      raise CliError(f"Importing {path} failed: {type(e).__name__}: {e}")
  else:
    if "" not in sys.path and os.getcwd() not in sys.path:
      sys.path.insert(0, os.getcwd())
    try:
      module = importlib.import_module(module_name)
    except ImportError as e:
      raise CliError(f"Cannot import module {module_name!r}: {e}. Is it on "
                     "PYTHONPATH (or in the current directory)?")
  factory = getattr(module, attr, None)
  if factory is None:
    names = sorted(n for n, v in vars(module).items()
                   if not n.startswith("_") and callable(v) and
                   getattr(v, "__module__", None) == module.__name__)
    raise CliError(f"Module {module_name!r} has no {attr!r}; callables in "
                   f"it: {', '.join(names[:20]) or 'none'}.")
  if not callable(factory):
    raise CliError(f"{spec} is not callable.")
  return factory


def build_model(factory, settings: dict[str, Any], name: str,
                extra_keys: tuple[str, ...] = ()) -> dict[str, Any]:
  """Calls a factory and normalises its result to the dict contract (the
  NTK options it does not give are left out: ``ntk_fn``'s defaults);
  ``extra_keys`` are further keys a command accepts."""
  try:
    made = factory(**settings)
  except TypeError as e:
    if settings:
      raise CliError(f"{name}(**{settings}) failed: {e}. Check the --set "
                     "names against the factory's arguments.")
    raise
  if isinstance(made, (tuple, list)):
    if len(made) not in (3, 4):
      raise CliError(f"{name} returned a tuple of {len(made)} items; expected "
                     "(f, params, x1) or (f, params, x1, x2).")
    made = dict(zip(("f", "params", "x1", "x2"), made))
  if not isinstance(made, dict):
    raise CliError(f"{name} returned a {type(made).__name__}; expected a dict "
                   "with f, params, x1 (see `autontk tune -h`).")
  missing = [k for k in ("f", "params", "x1") if k not in made]
  if missing:
    raise CliError(f"{name} returned a dict without {', '.join(missing)}; it "
                   "needs at least f, params and x1.")
  known = {"f", "params", "x1", "x2", "kwargs", *NTK_OPTION_NAMES,
           *extra_keys}
  extra = sorted(set(made) - known)
  if extra:
    raise CliError(f"{name} returned unknown keys {extra}; allowed: "
                   f"{sorted(known)}.")
  if not callable(adapters.apply_fn(made["f"])):
    raise CliError(f"{name}: 'f' must be callable as f(params, x), or a "
                   "model object (see autontk.adapters).")
  out = {"x2": None, "kwargs": {}, **made}
  out["kwargs"] = dict(out["kwargs"] or {})
  return out


def _resize(x, n: int):
  """Batch of ``n`` examples from ``x`` (axis 0 of every leaf), tiling."""
  def one(a):
    a = jnp.asarray(a)
    if a.ndim == 0:
      raise CliError("--n1/--n2 need inputs with a batch axis (axis 0).")
    reps = -(-n // a.shape[0])
    return jnp.concatenate([a] * reps, axis=0)[:n]

  return jax.tree.map(one, x)


def apply_overrides(model: dict[str, Any], args) -> dict[str, Any]:
  """The model with the command line's NTK options and batch sizes."""
  model = dict(model)
  for opt in ("trace_axes", "diagonal_axes", "vmap_axes"):
    v = getattr(args, opt, None)
    if v is not None:
      model[opt] = v
  if getattr(args, "n1", None):
    model["x1"] = _resize(model["x1"], args.n1)
  if getattr(args, "n2", None):
    model["x2"] = _resize(model["x1"] if model["x2"] is None else model["x2"],
                          args.n2)
  return model


def ntk_options(model: dict[str, Any]) -> dict[str, Any]:
  """The NTK options a model gives (``ntk_fn``'s keyword arguments)."""
  options = {k: model[k] for k in NTK_OPTION_NAMES if k in model}
  if options.get("vmap_axes") == "none":
    options["vmap_axes"] = None
  return options


def add_model_options(p: argparse.ArgumentParser) -> None:
  """The model options of `tune` and `report`: factory settings, batch
  sizes and NTK options."""
  p.add_argument("--set", metavar="KEY=VALUE", action="append",
                 type=_parse_setting,
                 help="keyword argument for the factory (repeatable); VALUE "
                      "is a Python literal, e.g. --set width=512")
  p.add_argument("--n1", type=int, metavar="N",
                 help="resize x1 to N examples (axis 0, tiling the "
                      "factory's examples)")
  p.add_argument("--n2", type=int, metavar="N",
                 help="use an x2 of N examples (default: the factory's x2, "
                      "or x2 = x1)")
  p.add_argument("--trace-axes", type=_parse_axes, metavar="AXES",
                 help="output axes summed over, e.g. -1 (logits) or none for "
                      "the full O×O block; default: the factory's, else -1")
  p.add_argument("--diagonal-axes", type=_parse_axes, metavar="AXES",
                 help="output axes kept as diagonals, e.g. 0 for per-example "
                      "kernels; default: the factory's, else none")
  p.add_argument("--vmap-axes", type=_parse_vmap, metavar="AXIS",
                 help="batch axis of inputs/outputs (enables chunked plans), "
                      "or none; default: the factory's")


def _parse_axes(text: str):
  text = text.strip().lower()
  if text in ("", "none", "()"):
    return ()
  try:
    return tuple(int(t) for t in text.replace(" ", "").strip("()").split(",")
                 if t)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected comma-separated ints like -1 or 0,2 (or 'none'); got "
        f"{text!r}") from None


def _parse_vmap(text: str):
  text = text.strip().lower()
  if text in ("none", ""):
    return "none"
  try:
    return int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected an int batch axis or 'none'; got {text!r}") from None


def _parse_setting(text: str) -> tuple[str, Any]:
  key, sep, value = text.partition("=")
  if not sep or not key.isidentifier():
    raise argparse.ArgumentTypeError(
        f"expected KEY=VALUE with a Python identifier KEY; got {text!r}")
  try:
    return key, ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return key, value  # a bare string, e.g. activation=relu
