"""`python -m anynet` runs the command line."""

import sys

from anynet.cli import main

sys.exit(main())
