"""``python -m codeformer ...``: the ``codeformer`` console script."""

import sys

from codeformer.cli import main

# Guarded: the web app's restoration process (multiprocessing's spawn) imports this module again.
if __name__ == "__main__":
    sys.exit(main())
