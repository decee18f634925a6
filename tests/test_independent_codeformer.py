"""Our CodeFormer against an independent implementation (spandrel-extra-arches) on the same random weights.

spandrel-extra-arches carries its own CodeFormer (a port of the reference's, written apart from ours),
which loads the official layout and only runs the official 512x512 / 16x16-token configuration. On
the same random official-layout weights both must predict the same code tokens, and their images
must agree within float rounding (our generator computes the nearest-2x + conv upsampling in its
sub-pixel form and fuses some arithmetic, so bit equality is not expected).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from checkpoint_factory import VARIANTS, random_codeformer
from codeformer.restorer import FaceRestorer, crops_to_batch

extra = pytest.importorskip("spandrel_extra_arches.architectures.CodeFormer")

# Images in [-1, 1]: float32 rounding through ~100 layers with random weights (measured 0.9e-3 with two
# torch threads, 1.4e-3 with one: the summation order changes) stays below a quarter of an 8-bit level.
IMAGE_TOLERANCE = 2e-3


@pytest.fixture(scope="module")
def both() -> tuple[FaceRestorer, torch.nn.Module]:
    ours = random_codeformer(VARIANTS["codeformer"], seed=11)
    state = {name: tensor.clone() for name, tensor in ours.state_dict().items()}
    descriptor = extra.CodeFormerArch().load(state)
    theirs = descriptor.model.eval()
    theirs.load_state_dict(state, strict=True)  # the official layout loads into both
    return FaceRestorer(ours, "cpu"), theirs


def _face(seed: int) -> np.ndarray:
    """A smooth random 512x512 BGR crop: a few blobs, so tokens depend on the content."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (8, 8, 3)).astype(np.float32)
    return np.clip(cv2.resize(low, (512, 512), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def test_tokens_equal_and_images_within_rounding(both) -> None:
    ours, theirs = both
    weight = 0.7  # the fusion blocks active (w = 0 skips them in both)
    batch = crops_to_batch([_face(3)], torch.device("cpu"))  # (1, 3, 512, 512) RGB in [-1, 1]
    with torch.inference_mode():
        their_image, their_logits = theirs(batch.clone(), weight=weight)  # (1, 3, 512, 512), (1, 256, 1024)
        # FaceRestorer._forward's steps, the encoder run once and the logits kept for the tokens.
        lq_feat, features = ours.net.encode(batch)
        logits = ours.net.predict_logits(lq_feat)
        our_tokens = logits.argmax(dim=2)  # (1, 256)
        our_image = ours._decode(ours.net.code_features(logits, lq_feat, adain=True), features, weight)
    # The official size's shapes: 512 px out, 256 positions over 1024 codes, a 16x16 grid of 256 features.
    assert our_image.shape == their_image.shape == (1, 3, 512, 512) and torch.isfinite(our_image).all()
    assert logits.shape == their_logits.shape == (1, 256, 1024) and lq_feat.shape == (1, 256, 16, 16)
    assert torch.equal(our_tokens, their_logits.argmax(dim=2))
    # The tokens depend on the content (the comparison is not vacuous): random weights with a reasonable spread
    # do not collapse the 256 positions onto a few codes.
    assert len(torch.unique(our_tokens)) > 10
    difference = (our_image.clamp(-1, 1) - their_image.clamp(-1, 1)).abs().max().item()
    assert difference < IMAGE_TOLERANCE
