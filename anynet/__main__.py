"""`python -m anynet` runs the command line."""

import sys

try:
    from anynet.cli import main
except KeyboardInterrupt:  # Ctrl-C while the libraries load: no traceback, the usual code
    print("anynet: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
