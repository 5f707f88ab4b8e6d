"""`python -m balance_refill ...` runs the CLI."""

import sys

from .cli import main

sys.exit(main())
