"""`python -m hdkd ...` (also what torchrun launches)."""

import sys

from hdkd.cli import main

sys.exit(main())
