"""The web app: ``python app.py [--host ...] [--port ...]`` is ``codeformer ui``; see ``codeformer ui --help``."""

import sys

from codeformer.cli import main

if __name__ == "__main__":
    sys.exit(main(["ui", *sys.argv[1:]]))
