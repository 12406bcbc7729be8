"""`python -m omnilive ...` is the `omnilive` command."""

import sys

from omnilive.cli import main

sys.exit(main())
