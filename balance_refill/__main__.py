"""`python -m balance_refill ...` runs the CLI (the `cli` extra).

`balance_refill.cli` itself imports with the core install only; without the extra its
`main` prints a one-line hint naming the extra and returns 2, so this never shows a
traceback for a missing extra.
"""

import sys

from .cli import main

sys.exit(main())
