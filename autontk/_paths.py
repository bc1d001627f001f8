"""Where autontk keeps what it learns on this machine.

One directory holds the plan cache (``plans.sqlite``), the tuner's journals
(``tuning/``), the measured device constants (``device_constants.json``)
and JAX's persistent compilation cache (``jax/``): ``$AUTONTK_CACHE_DIR``
if set, else the platform's user cache directory (``~/.cache/autontk`` on
Linux).
"""

from __future__ import annotations

import os
import pathlib

import platformdirs


def cache_directory() -> pathlib.Path:
  """``$AUTONTK_CACHE_DIR`` if set, else the user cache dir for autontk.

  >>> import os
  >>> os.environ["AUTONTK_CACHE_DIR"] = "/tmp/autontk-example"
  >>> str(cache_directory())
  '/tmp/autontk-example'
  >>> del os.environ["AUTONTK_CACHE_DIR"]
  """
  env = os.environ.get("AUTONTK_CACHE_DIR")
  if env:
    return pathlib.Path(env).expanduser()
  return pathlib.Path(platformdirs.user_cache_dir("autontk"))
