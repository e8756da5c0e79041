"""`python -m lucidity`: the same as the `lucidity` command."""

import sys

from .cli import main

sys.exit(main())
