"""NTKs of whole datasets: tiles across devices and hosts, streamed to disk.

:func:`ntk_tiled` is the entry point and :func:`run_status` reports how far a
run on disk is; see ``docs/tiled.md``.
"""

from autontk.tiled.api import ntk_tiled as ntk_tiled
from autontk.tiled.api import run_status as run_status
