"""The segmenter's pure steps: probability maps -> regions, and the uncertainty of a map."""

from __future__ import annotations

import numpy as np
import pytest

from backend.segmenter import find_regions, uncertainty_of


def test_regions_and_uncertainty_helpers():
    probs = np.zeros((20, 20), np.float32)
    probs[2:6, 2:6] = 0.8
    probs[10:18, 10:18] = 0.6
    probs[0, 19] = 0.9  # a single pixel: dropped by min_area
    inst = find_regions("x", probs, 0.5, "instance", min_area=4)
    assert [int(r.mask.sum()) for r in inst] == [16, 64]
    assert [round(r.score, 3) for r in inst] == [0.8, 0.6]
    [sem] = find_regions("x", probs, 0.5, "semantic", min_area=4)
    assert int(sem.mask.sum()) == 80
    assert find_regions("x", probs, 0.95, "instance", 1) == []
    assert uncertainty_of(probs, 0.2, 0.7) == pytest.approx(64 / 81)
    assert uncertainty_of(np.zeros((4, 4)), 0.2, 0.8) == 0.0
