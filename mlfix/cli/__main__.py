"""``python -m mlfix.cli``: the ``mlfix`` command."""

import sys

from mlfix.cli import main

sys.exit(main())
