"""Files shipped with the package (config/, models/): found in the source tree, in an ament
prefix (colcon, or the pip environment `make setup` registers) or in the Python environment's
``share/clamp_ros``."""

from __future__ import annotations

import sys
from pathlib import Path


def shipped_path(relative: str | Path) -> Path | None:
    """The first existing ``<base>/<relative>`` over the places the package's data can be, or
    None."""
    bases = [Path(__file__).resolve().parents[1], Path(sys.prefix) / "share" / "clamp_ros"]
    try:
        from ament_index_python.packages import get_package_share_directory

        bases.insert(1, Path(get_package_share_directory("clamp_ros")))
    except Exception:  # noqa: BLE001 - no ament index: the other places still count
        pass
    for base in bases:
        if (base / relative).is_file():
            return base / relative
    return None
