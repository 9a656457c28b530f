"""Pictures of rendered views for people: depth as a colour map, XYZ as RGB, tiled with labels."""

from __future__ import annotations

import numpy as np


def view_picture(
    image: np.ndarray, mask: np.ndarray, lo: np.ndarray, hi: np.ndarray, max_depth_m: float = 1.5
) -> np.ndarray:
    """One view (H, W, 4) -> (2H, W, 3) uint8: depth (turbo, near = red) above XYZ mapped from the
    box ``lo``..``hi`` to RGB. Empty pixels are black."""
    import cv2

    d = np.clip(image[..., 0] / max_depth_m, 0.0, 1.0)
    depth_rgb = cv2.applyColorMap(((1.0 - d) * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1]
    xyz = np.clip((image[..., 1:] - lo) / (np.asarray(hi) - lo), 0.0, 1.0)
    xyz_rgb = (xyz * 255).astype(np.uint8)
    depth_rgb = np.where(mask[..., None], depth_rgb, 0)
    xyz_rgb = np.where(mask[..., None], xyz_rgb, 0)
    return np.concatenate([depth_rgb, xyz_rgb], axis=0).astype(np.uint8)


def tiled_picture(images, masks, names, lo, hi) -> np.ndarray:
    """All views side by side with their names: (2H + 20, V*W, 3) uint8."""
    import cv2

    tiles = []
    for img, m, name in zip(images, masks, names):
        pic = view_picture(img, m, np.asarray(lo, np.float32), np.asarray(hi, np.float32))
        label = np.full((20, pic.shape[1], 3), 255, np.uint8)
        cv2.putText(label, name, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
        tiles.append(np.concatenate([label, pic], axis=0))
    return np.concatenate(tiles, axis=1)


def write_png(path, rgb: np.ndarray) -> None:
    """Atomic PNG write (a killed process never leaves a truncated file)."""
    import os

    import cv2

    path = str(path)
    tmp = f"{path}.tmp.png"
    if not cv2.imwrite(tmp, np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f"could not write {path}")
    os.replace(tmp, path)
