"""`python -m canctr.cli ...`: the same as the `canctr` script."""

import sys

from canctr.cli.main import main

sys.exit(main())
