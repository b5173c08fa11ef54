"""`python -m dlm.cli ...`."""

import sys

from . import main

sys.exit(main())
