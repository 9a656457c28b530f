"""Fusion and z-buffer kernels in two implementations with identical arithmetic.

``numpy`` is the readable reference; ``numba`` is the fast path (chosen by ``clamp bench
perception``). Both use float32 with the same operation order and the same packed z-buffer key
``(uint32(depth_um) << 32) | point_index``, so they agree bit for bit (a test checks this):
the nearest point wins a pixel, exact ties go to the lower point index.
"""

from __future__ import annotations

import os

import numpy as np

# numba's OpenMP workers otherwise spin at 100 % between calls of a 30 Hz loop
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

EMPTY_KEY = np.uint64(0xFFFFFFFFFFFFFFFF)
DEPTH_KEY_SCALE = np.float32(1e6)  # z-buffer resolution: 1 micrometre
_INDEX_MASK = np.uint64(0xFFFFFFFF)

try:
    import numba
    from numba import njit, prange

    numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]
    HAVE_NUMBA = True
except ImportError:  # numba is optional on robots; numpy is always there
    HAVE_NUMBA = False


# --------------------------------------------------------------------------- numpy reference
def fuse_numpy(depth, scale, rays, rot, trans, dmin, dmax, lo, hi):
    """Back-project, transform and crop one camera.

    Returns (xyz (M, 3) float32 base frame, pixel (M,) int64 flat pixel index), row-major order.
    """
    d = depth.astype(np.float32).reshape(-1) * np.float32(scale)
    valid = (d > dmin) & (d < dmax)
    pix = np.flatnonzero(valid)
    d = d[pix]
    r = rays.reshape(-1, 2)[pix]
    x, y, z = d * r[:, 0], d * r[:, 1], d
    xb = rot[0, 0] * x + rot[0, 1] * y + rot[0, 2] * z + trans[0]
    yb = rot[1, 0] * x + rot[1, 1] * y + rot[1, 2] * z + trans[1]
    zb = rot[2, 0] * x + rot[2, 1] * y + rot[2, 2] * z + trans[2]
    keep = (xb >= lo[0]) & (xb <= hi[0]) & (yb >= lo[1]) & (yb <= hi[1])
    keep &= (zb >= lo[2]) & (zb <= hi[2])
    return np.stack([xb[keep], yb[keep], zb[keep]], axis=-1), pix[keep]


def _project_numpy(points, rot, trans, intr, near):
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    zc = rot[2, 0] * x + rot[2, 1] * y + rot[2, 2] * z + trans[2]
    xc = rot[0, 0] * x + rot[0, 1] * y + rot[0, 2] * z + trans[0]
    yc = rot[1, 0] * x + rot[1, 1] * y + rot[1, 2] * z + trans[1]
    return xc, yc, zc


def render_numpy(points, rots, trans, intr, width, height, near):
    """Z-buffer ``points`` (N, 3) float32 into V views.

    rots (V, 3, 3) / trans (V, 3) float32 map base -> view optical frame; intr (V, 4) float32
    fx, fy, cx, cy. Returns (out (V, H, W, 4) float32 [depth, x, y, z], mask (V, H, W) bool).
    """
    n_views = rots.shape[0]
    out = np.zeros((n_views, height, width, 4), np.float32)
    mask = np.zeros((n_views, height, width), bool)
    idx_all = np.arange(points.shape[0], dtype=np.uint64)
    for v in range(n_views):
        xc, yc, zc = _project_numpy(points, rots[v], trans[v], intr[v], near)
        front = zc > near
        xc, yc, zc, idx = xc[front], yc[front], zc[front], idx_all[front]
        u = np.floor(intr[v, 0] * xc / zc + intr[v, 2] + np.float32(0.5))
        w = np.floor(intr[v, 1] * yc / zc + intr[v, 3] + np.float32(0.5))
        inside = (u >= 0) & (u < width) & (w >= 0) & (w < height)
        pix = w[inside].astype(np.int64) * width + u[inside].astype(np.int64)
        zk = (zc[inside] * DEPTH_KEY_SCALE).astype(np.int32).astype(np.uint64)
        keys = (zk << np.uint64(32)) | idx[inside]
        zbuf = np.full(height * width, EMPTY_KEY, np.uint64)
        np.minimum.at(zbuf, pix, keys)
        hit = np.flatnonzero(zbuf != EMPTY_KEY)
        win = (zbuf[hit] & _INDEX_MASK).astype(np.int64)
        _, _, zw = _project_numpy(points[win], rots[v], trans[v], intr[v], near)
        flat = out[v].reshape(-1, 4)
        flat[hit, 0] = zw
        flat[hit, 1:] = points[win]
        mask[v].reshape(-1)[hit] = True
    return out, mask


# --------------------------------------------------------------------------- numba fast path
if HAVE_NUMBA:

    @njit(parallel=True, cache=True)
    def _fuse_camera(
        depth, scale, rays, rot, trans, dmin, dmax, lo, hi, first_index, px, py, pz, pix, counts
    ):
        """Back-project, transform and crop one camera, one row per task. Row ``r``'s points are
        stored from ``first_index + r * width`` on (rows are not compacted); ``counts[r]`` says
        how many."""
        height, width = depth.shape
        for r in prange(height):
            start = first_index + r * width
            n = 0
            for c in range(width):
                d = np.float32(depth[r, c]) * scale
                if not (d > dmin and d < dmax):  # also false for NaN
                    continue
                x = d * rays[r, c, 0]
                y = d * rays[r, c, 1]
                z = d
                xb = rot[0, 0] * x + rot[0, 1] * y + rot[0, 2] * z + trans[0]
                yb = rot[1, 0] * x + rot[1, 1] * y + rot[1, 2] * z + trans[1]
                zb = rot[2, 0] * x + rot[2, 1] * y + rot[2, 2] * z + trans[2]
                if xb < lo[0] or xb > hi[0] or yb < lo[1] or yb > hi[1] or zb < lo[2] or zb > hi[2]:
                    continue
                px[start + n] = xb
                py[start + n] = yb
                pz[start + n] = zb
                pix[start + n] = r * width + c
                n += 1
            counts[r] = n

    @njit(parallel=True, cache=True)
    def _render_rows(
        px, py, pz, row_start, row_count, block_rows, vrot, vtrans, intr, vwidth, vheight, near,
        zbufs, tz, tp,
    ):
        """Z-buffer point rows into private buffers, one buffer per block of rows.

        Views are the outer loop so one view's buffer stays in L2 while a block streams
        through it. Projection runs over 1-D slices without branches (LLVM vectorises it); the
        scatter is the only data-dependent loop. Rows, and so point indices, are visited in
        increasing order, which the merge in ``_gather`` relies on for exact ties."""
        fw, fh = np.float32(vwidth), np.float32(vheight)
        for k in prange(block_rows.shape[0] - 1):
            tzs, tps = tz[k], tp[k]
            for v in range(vrot.shape[0]):
                r00, r01, r02 = vrot[v, 0, 0], vrot[v, 0, 1], vrot[v, 0, 2]
                r10, r11, r12 = vrot[v, 1, 0], vrot[v, 1, 1], vrot[v, 1, 2]
                r20, r21, r22 = vrot[v, 2, 0], vrot[v, 2, 1], vrot[v, 2, 2]
                t0, t1, t2 = vtrans[v, 0], vtrans[v, 1], vtrans[v, 2]
                fx, fy, cx, cy = intr[v, 0], intr[v, 1], intr[v, 2], intr[v, 3]
                zb = zbufs[k, v]
                for r in range(block_rows[k], block_rows[k + 1]):
                    start = row_start[r]
                    n = row_count[r]
                    xs, ys, zs = px[start:start + n], py[start:start + n], pz[start:start + n]
                    for j in range(n):
                        x, y, z = xs[j], ys[j], zs[j]
                        zc = r20 * x + r21 * y + r22 * z + t2
                        xc = r00 * x + r01 * y + r02 * z + t0
                        yc = r10 * x + r11 * y + r12 * z + t1
                        u = np.floor(fx * xc / zc + cx + np.float32(0.5))
                        w = np.floor(fy * yc / zc + cy + np.float32(0.5))
                        ok = (zc > near) & (u >= np.float32(0)) & (u < fw)
                        ok &= (w >= np.float32(0)) & (w < fh)
                        # misses go to the spare slot at index H*W
                        tps[j] = np.int32(w * fw + u) if ok else np.int32(vwidth * vheight)
                        tzs[j] = np.int32(zc * np.float32(1e6)) if ok else np.int32(0)
                    for j in range(n):
                        p = tps[j]
                        key = (np.uint64(tzs[j]) << np.uint64(32)) | np.uint64(start + j)
                        if key < zb[p]:
                            zb[p] = key

    @njit(parallel=True, cache=True)
    def _fill(flat, value):
        for i in prange(flat.shape[0]):
            flat[i] = value

    @njit(parallel=True, cache=True)
    def _gather(px, py, pz, vrot, vtrans, zbufs, out, mask):
        n_buf, n_views, n_pix = zbufs.shape
        n_pix -= 1  # the last slot collects points outside the view
        empty = np.uint64(0xFFFFFFFFFFFFFFFF)
        for q in prange(n_views * n_pix):
            v = q // n_pix
            p = q % n_pix
            key = zbufs[0, v, p]
            for k in range(1, n_buf):
                if zbufs[k, v, p] < key:
                    key = zbufs[k, v, p]
            if key == empty:
                for c in range(4):
                    out[v, p, c] = 0.0
                mask[v, p] = False
                continue
            i = np.int64(key & np.uint64(0xFFFFFFFF))
            x, y, z = px[i], py[i], pz[i]
            out[v, p, 0] = vrot[v, 2, 0] * x + vrot[v, 2, 1] * y + vrot[v, 2, 2] * z + vtrans[v, 2]
            out[v, p, 1] = x
            out[v, p, 2] = y
            out[v, p, 3] = z
            mask[v, p] = True

    @njit(parallel=True, cache=True)
    def _compact(px, py, pz, pix, counts, row_first, row_offsets, out, out_pix):
        for r in prange(counts.shape[0]):
            src = row_first[r]
            dst = row_offsets[r]
            for j in range(counts[r]):
                out[dst + j, 0] = px[src + j]
                out[dst + j, 1] = py[src + j]
                out[dst + j, 2] = pz[src + j]
                out_pix[dst + j] = pix[src + j]


class NumbaKernels:
    """Fast path with reusable buffers (one instance per pipeline; not thread-safe)."""

    def __init__(self, threads: int = 0):
        if not HAVE_NUMBA:
            raise RuntimeError("backend 'numba' requested but numba is not installed")
        if threads > 0:
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        self._bufs: dict[str, np.ndarray] = {}

    def _buf(self, name, shape, dtype):
        b = self._bufs.get(name)
        if b is None or b.shape != shape or b.dtype != dtype:
            b = np.empty(shape, dtype)
            self._bufs[name] = b
        return b

    def _render(self, points, row_start, row_count, vrot, vtrans, intr, width, height, near):
        """points (3, N) SoA; rows of points given by start and count (N.B. not compacted)."""
        n_views = vrot.shape[0]
        n_blocks = max(1, numba.get_num_threads())
        # blocks of rows with about equal numbers of points
        cum = np.cumsum(row_count)
        targets = cum[-1] * np.arange(1, n_blocks) / n_blocks if len(cum) else []
        block_rows = np.concatenate(
            [[0], np.searchsorted(cum, targets, side="right"), [len(row_count)]]
        ).astype(np.int64)
        zbufs = self._buf("zbufs", (n_blocks, n_views, width * height + 1), np.uint64)
        _fill(zbufs.reshape(-1), EMPTY_KEY)
        max_n = int(row_count.max()) if len(row_count) else 1
        tz = self._buf("tz", (n_blocks, max(max_n, 1)), np.int32)
        tp = self._buf("tp", (n_blocks, max(max_n, 1)), np.int32)
        if n_views:
            _render_rows(
                points[0], points[1], points[2], row_start, row_count, block_rows, vrot, vtrans,
                intr, width, height, near, zbufs, tz, tp,
            )
        out = np.empty((n_views, width * height, 4), np.float32)
        mask = np.empty((n_views, width * height), np.bool_)
        _gather(points[0], points[1], points[2], vrot, vtrans, zbufs, out, mask)
        return out.reshape(n_views, height, width, 4), mask.reshape(n_views, height, width)

    def fuse_render(
        self, cams, dmin, dmax, lo, hi, vrot, vtrans, intr, width, height, near, want_cloud=False
    ):
        """``cams``: list of (depth, scale, rays, rot, trans). Returns (images (V, H, W, 4),
        mask (V, H, W), parts): ``parts`` is, when ``want_cloud``, the fused points of each camera
        as (xyz (M, 3) float32, flat pixel index (M,) int64), else None."""
        sizes = [c[0].shape for c in cams]
        total = sum(h * w for h, w in sizes)
        rows = sum(h for h, _ in sizes)
        points = self._buf("points", (3, total), np.float32)
        pix = self._buf("pix", (total,), np.int32)
        counts = np.empty(rows, np.int64)
        row_start = np.empty(rows, np.int64)
        first_index, first_row = 0, 0
        for depth, scale, rays, rot, trans in cams:
            h, w = depth.shape
            _fuse_camera(
                depth, scale, rays, rot, trans, dmin, dmax, lo, hi, first_index,
                points[0], points[1], points[2], pix, counts[first_row:first_row + h],
            )
            row_start[first_row:first_row + h] = first_index + w * np.arange(h)
            first_index += h * w
            first_row += h
        images, mask = self._render(
            points, row_start, counts, vrot, vtrans, intr, width, height, near
        )
        if not want_cloud:
            return images, mask, None
        offsets = np.zeros(rows, np.int64)
        np.cumsum(counts[:-1], out=offsets[1:])
        n = int(counts.sum())
        xyz, out_pix = np.empty((n, 3), np.float32), np.empty(n, np.int64)
        _compact(points[0], points[1], points[2], pix, counts, row_start, offsets, xyz, out_pix)
        parts, r0 = [], 0
        for h, _ in sizes:
            a, b = offsets[r0], offsets[r0 + h - 1] + counts[r0 + h - 1]
            parts.append((xyz[a:b], out_pix[a:b]))
            r0 += h
        return images, mask, parts

    def render(self, points, vrot, vtrans, intr, width, height, near):
        """Z-buffer an explicit (N, 3) cloud (used after voxel downsampling)."""
        pts = np.ascontiguousarray(np.asarray(points, np.float32).T)
        n, chunk = pts.shape[1], 1024
        row_start = np.arange(0, n, chunk, dtype=np.int64)
        row_count = np.minimum(chunk, n - row_start)
        return self._render(pts, row_start, row_count, vrot, vtrans, intr, width, height, near)


class NumpyKernels:
    """Reference path (and the fallback where numba is not installed)."""

    def fuse_render(
        self, cams, dmin, dmax, lo, hi, vrot, vtrans, intr, width, height, near, want_cloud=False
    ):
        parts = [fuse_numpy(*c, dmin, dmax, lo, hi) for c in cams]
        xyz = np.concatenate([p[0] for p in parts])
        images, mask = render_numpy(xyz, vrot, vtrans, intr, width, height, near)
        return images, mask, parts if want_cloud else None

    def render(self, points, vrot, vtrans, intr, width, height, near):
        return render_numpy(points, vrot, vtrans, intr, width, height, near)


def make_kernels(backend: str = "auto", threads: int = 0):
    """``auto`` picks numba when importable (the faster path by benchmark), else numpy."""
    if backend == "auto":
        backend = "numba" if HAVE_NUMBA else "numpy"
    if backend == "numba":
        return NumbaKernels(threads)
    if backend == "numpy":
        return NumpyKernels()
    raise ValueError(f"unknown perception backend '{backend}' (use auto, numba or numpy)")
