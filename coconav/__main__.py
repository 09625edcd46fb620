"""`python -m coconav ...` runs the command line (also what `accelerate launch -m coconav` uses)."""

import sys

from coconav.cli import main

sys.exit(main())
