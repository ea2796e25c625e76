"""`python -m backend.cli`: the same as `clipseg-label`."""

import sys

from backend.cli import main

sys.exit(main())
