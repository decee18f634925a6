"""Fill white-painted regions of aligned faces: ``python inference_inpainting.py -i inputs/masked_faces``."""

import sys

from codeformer.cli import inpaint_main

if __name__ == "__main__":
    sys.exit(inpaint_main(tune_runtime=True))
