"""NTKs of whole datasets: tiles across devices and hosts, streamed to disk.

:func:`ntk_tiled` is the entry point; see ``docs/tiled.md``.
"""

from autontk.tiled.api import ntk_tiled as ntk_tiled
