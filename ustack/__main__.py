"""`python -m ustack` is the `ustack` command (the tests run it this way, by interpreter)."""

import sys

from .cli import main

sys.exit(main())
