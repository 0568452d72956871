"""`python -m canctr ...` (and `torchrun ... -m canctr train ...`): the same as the `canctr` script."""

import sys

from canctr.cli.main import main

sys.exit(main())
