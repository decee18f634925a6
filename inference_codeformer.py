"""Restore faces: ``python inference_codeformer.py -w 0.7 --input_path <picture, folder or video>``.

Aligned 512x512 crops with ``--has_aligned``; see ``--help`` for every option.
"""

import sys

from codeformer.cli import restore_main

if __name__ == "__main__":
    sys.exit(restore_main(tune_runtime=True))
