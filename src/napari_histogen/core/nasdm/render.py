"""Turning model tensors into pictures: images to uint8, conditions to coloured masks."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .condition import type_map_from_condition

__all__ = ["to_uint8_image", "condition_to_rgb"]


def to_uint8_image(tensor) -> np.ndarray:
    """A ``(3, H, W)`` tensor or array in [-1, 1] -> ``(H, W, 3) uint8``."""
    arr = tensor.detach().float().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor, dtype=np.float32)
    arr = np.clip((arr + 1.0) * 127.5, 0, 255)
    return np.rint(arr).astype(np.uint8).transpose(1, 2, 0)


def condition_to_rgb(condition: np.ndarray, class_ids: Sequence[int], scheme) -> np.ndarray:
    """A condition drawn as the annotator shows it: class colours on white, edges dark."""
    type_map = type_map_from_condition(condition, class_ids)
    lut = np.full((max([0, *class_ids]) + 1, 3), 255, np.uint8)
    for cid in class_ids:
        lut[int(cid)] = scheme.color(int(cid)) if int(cid) in scheme else (128, 128, 128)
    rgb = lut[type_map]
    edges = np.asarray(condition[len(class_ids) + 1]) > 0.5
    rgb[edges & (type_map > 0)] = (40, 40, 40)
    return rgb
