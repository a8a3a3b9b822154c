"""``python -m memoe.cli ...``: the ``memoe`` command."""

import sys

from memoe.cli import main

sys.exit(main())
