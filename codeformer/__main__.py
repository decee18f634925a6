"""``python -m codeformer ...``: the ``codeformer`` console script."""

import sys

from codeformer.cli import main

sys.exit(main())
