"""Colorize black-and-white or faded aligned faces: ``python inference_colorization.py -i inputs/gray_faces``."""

import sys

from codeformer.cli import colorize_main

if __name__ == "__main__":
    sys.exit(colorize_main(tune_runtime=True))
