"""Colour images for a model's RGB branch: the one resize that training windows, the policy
node, ``clamp eval sim`` and ``clamp eval replay`` all apply.

A camera's (H, W, 3) uint8 RGB image becomes the model's ``rgb_size`` [w, h] by OpenCV's
pixel-area resampling (``cv2.INTER_AREA``: each output pixel the mean of the input pixels it
covers, what downscaling wants; no aliasing of fine texture). An image already of that size is
used as it is. The aspect ratio must match the model's within ``MAX_ASPECT_MISMATCH``: a
16:9 camera squeezed into a 4:3 model input would show the policy shapes it never saw, so it
is refused instead.
"""

from __future__ import annotations

import numpy as np

MAX_ASPECT_MISMATCH = 0.02
"""Largest relative difference between a camera's aspect ratio (W/H) and the model's."""


class RgbInputError(ValueError):
    """A colour image that cannot become the model's RGB input; one line naming why."""


def resize_rgb(image: np.ndarray, size, camera: str = "") -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (h, w, 3) uint8, ``size`` = [w, h] (C-contiguous)."""
    import cv2

    who = f"camera '{camera}'" if camera else "color image"
    w, h = int(size[0]), int(size[1])
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        got = getattr(image, "dtype", type(image).__name__)
        raise RgbInputError(f"{who}: the RGB branch needs a uint8 image, got {got}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise RgbInputError(f"{who}: the RGB branch needs an (H, W, 3) image, got {image.shape}")
    H, W = image.shape[:2]
    if (H, W) == (h, w):
        return np.ascontiguousarray(image)
    if abs((W / H) / (w / h) - 1.0) > MAX_ASPECT_MISMATCH:
        raise RgbInputError(
            f"{who}: color image is {W}x{H} (aspect {W / H:.3f}) but the model's rgb_size is "
            f"{w}x{h} (aspect {w / h:.3f}); crop or configure the camera to the model's aspect"
        )
    return cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=cv2.INTER_AREA)


def rgb_inputs(images: dict[str, np.ndarray | None], cameras, size) -> dict[str, np.ndarray]:
    """The model's RGB inputs: camera name -> resized image, for each of ``cameras`` (the
    model's ``rgb_cameras``); {} for a model without an RGB branch."""
    out = {}
    for cam in cameras:
        image = images.get(cam)
        if image is None:
            raise RgbInputError(
                f"camera '{cam}': the model's RGB branch needs its color image, got none"
            )
        out[cam] = resize_rgb(image, size, cam)
    return out


__all__ = ["MAX_ASPECT_MISMATCH", "RgbInputError", "resize_rgb", "rgb_inputs"]
