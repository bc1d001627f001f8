"""``python -m autontk.cli``: the ``autontk`` command."""

import sys

from autontk.cli.app import main

sys.exit(main())
