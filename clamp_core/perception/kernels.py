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
#
# One parallel region per camera fuses *and* renders: each worker owns one private z-buffer per
# view and takes every n-th band of ``_BAND_ROWS`` camera rows (interleaved bands balance the
# load without knowing the point counts). A band is back-projected into the shared point arrays
# (not compacted: a point keeps its pixel's slot, invalid points get x = NaN, which no view
# accepts) and, while it is hot in cache, projected into every view and scattered. The scatter
# is ``zbuf[p] = min(zbuf[p], key)`` on the full 64-bit key, so the result does not depend on
# the order in which points arrive or on how they are split between workers. A last parallel
# pass merges the private buffers and gathers the winners.
#
# All kernels use ``error_model='numpy'``: with the default ('python') every float division
# carries a zero check that keeps LLVM from vectorising the loops. Arrays are indexed with
# unsigned or provably non-negative integers where it matters, so no wraparound code is emitted.

_BAND_ROWS = 16  # camera rows per work unit (about 10k points: fits L1/L2 with the view data)
_CHUNK_POINTS = 8192  # points per work unit of ``render`` (explicit clouds)

if HAVE_NUMBA:

    @njit(cache=True, nogil=True, error_model="numpy")
    def _project_scatter(
        xs, ys, zs, n, first, vrot, vtrans, intr, v, vwidth, vheight, near, tp, tk, zbuf
    ):
        """Project points ``xs[:n]`` (index ``first + j``) into view ``v`` and min-scatter their
        keys into ``zbuf`` (H * W slots). The projection loop is branch-free and vectorises;
        the scatter skips misses (they come in long runs, so the branch predicts well) and
        stores the minimum unconditionally (no data-dependent branch to mispredict)."""
        fw, fh = np.float32(vwidth), np.float32(vheight)
        miss = np.uint32(vwidth * vheight)
        r00, r01, r02 = vrot[v, 0, 0], vrot[v, 0, 1], vrot[v, 0, 2]
        r10, r11, r12 = vrot[v, 1, 0], vrot[v, 1, 1], vrot[v, 1, 2]
        r20, r21, r22 = vrot[v, 2, 0], vrot[v, 2, 1], vrot[v, 2, 2]
        t0, t1, t2 = vtrans[v, 0], vtrans[v, 1], vtrans[v, 2]
        fx, fy, cx, cy = intr[v, 0], intr[v, 1], intr[v, 2], intr[v, 3]
        for j in range(n):
            x, y, z = xs[j], ys[j], zs[j]
            zc = r20 * x + r21 * y + r22 * z + t2
            xc = r00 * x + r01 * y + r02 * z + t0
            yc = r10 * x + r11 * y + r12 * z + t1
            u = np.floor(fx * xc / zc + cx + np.float32(0.5))
            w = np.floor(fy * yc / zc + cy + np.float32(0.5))
            ok = (zc > near) & (u >= np.float32(0)) & (u < fw)
            ok &= (w >= np.float32(0)) & (w < fh)
            tp[j] = np.uint32(w * fw + u) if ok else miss
            tk[j] = np.int32(zc * np.float32(1e6)) if ok else np.int32(0)
        # two interleaved halves: independent dependency chains for the out-of-order core
        h = n // 2
        for j in range(h):
            p = tp[j]
            if p != miss:
                key = (np.uint64(tk[j]) << np.uint64(32)) | np.uint64(first + j)
                old = zbuf[p]
                zbuf[p] = key if key < old else old
            j2 = j + h
            p2 = tp[j2]
            if p2 != miss:
                key2 = (np.uint64(tk[j2]) << np.uint64(32)) | np.uint64(first + j2)
                old2 = zbuf[p2]
                zbuf[p2] = key2 if key2 < old2 else old2
        for j in range(2 * h, n):
            p = tp[j]
            if p != miss:
                key = (np.uint64(tk[j]) << np.uint64(32)) | np.uint64(first + j)
                old = zbuf[p]
                zbuf[p] = key if key < old else old

    @njit(cache=True, nogil=True, error_model="numpy")
    def _fill_keys(zbuf):
        for v in range(zbuf.shape[0]):
            for p in range(zbuf.shape[1]):
                zbuf[v, p] = 0xFFFFFFFFFFFFFFFF

    @njit(parallel=True, cache=True, nogil=True, error_model="numpy")
    def _fuse_render_camera(
        depth,
        scale,
        rays,
        rot,
        trans,
        dmin,
        dmax,
        lo,
        hi,
        first_index,
        band,
        vrot,
        vtrans,
        intr,
        vwidth,
        vheight,
        near,
        zbufs,
        tp,
        tk,
        counts,
        px,
        py,
        pz,
        init,
    ):
        """Back-project, transform and crop one camera and z-buffer it into every view.

        ``rays`` is the flattened (H * W * 2) ray grid. Pixel (r, c) is point
        ``first_index + r * W + c``: its coordinates go to that slot of px / py / pz, with
        px = NaN where the depth is invalid or the point is outside the crop box; ``counts[r]``
        gets the number of valid points of row r. Worker k uses ``zbufs[k]`` and ``tp[k]`` /
        ``tk[k]`` and first fills its z-buffers when ``init``."""
        height, width = depth.shape
        n_views = vrot.shape[0]
        n_blocks = zbufs.shape[0]
        n_bands = (height + band - 1) // band
        r00, r01, r02 = rot[0, 0], rot[0, 1], rot[0, 2]
        r10, r11, r12 = rot[1, 0], rot[1, 1], rot[1, 2]
        r20, r21, r22 = rot[2, 0], rot[2, 1], rot[2, 2]
        t0, t1, t2 = trans[0], trans[1], trans[2]
        lx, ly, lz, hx, hy, hz = lo[0], lo[1], lo[2], hi[0], hi[1], hi[2]
        nan = np.float32(np.nan)
        for k in prange(n_blocks):
            if init:
                _fill_keys(zbufs[k])
            for b in range(k, n_bands, n_blocks):
                r0 = b * band
                r1 = min(r0 + band, height)
                first = first_index + r0 * width
                n = (r1 - r0) * width
                xs, ys, zs = px[first : first + n], py[first : first + n], pz[first : first + n]
                valid = 0
                for r in range(r0, r1):
                    o = (r - r0) * width
                    drow = depth[r]
                    rrow = rays[r * width * 2 : (r + 1) * width * 2]
                    xr, yr, zr = xs[o : o + width], ys[o : o + width], zs[o : o + width]
                    cnt = 0
                    for c in range(width):
                        d = np.float32(drow[c]) * scale
                        x = d * rrow[2 * c]
                        y = d * rrow[2 * c + 1]
                        z = d
                        xb = r00 * x + r01 * y + r02 * z + t0
                        yb = r10 * x + r11 * y + r12 * z + t1
                        zb = r20 * x + r21 * y + r22 * z + t2
                        ok = (d > dmin) & (d < dmax)  # also false for NaN
                        ok &= (xb >= lx) & (xb <= hx) & (yb >= ly) & (yb <= hy)
                        ok &= (zb >= lz) & (zb <= hz)
                        xr[c] = xb if ok else nan
                        yr[c] = yb
                        zr[c] = zb
                        cnt += np.int64(ok)
                    counts[r] = cnt
                    valid += cnt
                if valid == 0:
                    continue
                for v in range(n_views):
                    _project_scatter(
                        xs,
                        ys,
                        zs,
                        n,
                        first,
                        vrot,
                        vtrans,
                        intr,
                        v,
                        vwidth,
                        vheight,
                        near,
                        tp[k],
                        tk[k],
                        zbufs[k, v],
                    )

    @njit(parallel=True, cache=True, nogil=True, error_model="numpy")
    def _render_points(px, py, pz, chunk, vrot, vtrans, intr, vwidth, vheight, near, zbufs, tp, tk):
        """Z-buffer an explicit cloud: worker k fills ``zbufs[k]`` and takes every n-th chunk."""
        n_points = px.shape[0]
        n_blocks = zbufs.shape[0]
        n_chunks = (n_points + chunk - 1) // chunk
        for k in prange(n_blocks):
            _fill_keys(zbufs[k])
            for b in range(k, n_chunks, n_blocks):
                first = b * chunk
                n = min(chunk, n_points - first)
                for v in range(vrot.shape[0]):
                    _project_scatter(
                        px[first : first + n],
                        py[first : first + n],
                        pz[first : first + n],
                        n,
                        first,
                        vrot,
                        vtrans,
                        intr,
                        v,
                        vwidth,
                        vheight,
                        near,
                        tp[k],
                        tk[k],
                        zbufs[k, v],
                    )

    @njit(parallel=True, cache=True, nogil=True, error_model="numpy")
    def _gather(px, py, pz, vrot, vtrans, zbufs, out, mask):
        """Merge the private z-buffers (minimum key) and write depth, XYZ and mask."""
        n_buf, n_views = zbufs.shape[0], zbufs.shape[1]
        n_pix = out.shape[1]
        chunk = 2048
        n_chunks = (n_pix + chunk - 1) // chunk
        for q in prange(n_views * n_chunks):
            v = q // n_chunks
            p0 = (q - v * n_chunks) * chunk
            r20, r21, r22, t2 = vrot[v, 2, 0], vrot[v, 2, 1], vrot[v, 2, 2], vtrans[v, 2]
            for p in range(p0, min(p0 + chunk, n_pix)):
                key = zbufs[0, v, p]
                for k in range(1, n_buf):
                    other = zbufs[k, v, p]
                    key = other if other < key else key
                if key == 0xFFFFFFFFFFFFFFFF:
                    out[v, p, 0] = 0.0
                    out[v, p, 1] = 0.0
                    out[v, p, 2] = 0.0
                    out[v, p, 3] = 0.0
                    mask[v, p] = False
                else:
                    i = key & np.uint64(0xFFFFFFFF)
                    x, y, z = px[i], py[i], pz[i]
                    out[v, p, 0] = r20 * x + r21 * y + r22 * z + t2
                    out[v, p, 1] = x
                    out[v, p, 2] = y
                    out[v, p, 3] = z
                    mask[v, p] = True

    @njit(parallel=True, cache=True, nogil=True, error_model="numpy")
    def _compact(px, py, pz, row_src, row_width, row_pix, row_dst, out, out_pix):
        """Copy the valid points (px not NaN) of every row (``row_width[r]`` slots from
        ``row_src[r]``, flat pixel index from ``row_pix[r]``) to ``out`` (M, 3) / ``out_pix``
        from ``row_dst[r]`` on, keeping row-major order."""
        for r in prange(row_src.shape[0]):
            src = row_src[r]
            dst = row_dst[r]
            pix0 = row_pix[r]
            for c in range(row_width[r]):
                x = px[src + c]
                if not np.isnan(x):
                    out[dst, 0] = x
                    out[dst, 1] = py[src + c]
                    out[dst, 2] = pz[src + c]
                    out_pix[dst] = pix0 + c
                    dst += 1


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

    def _scratch(self, n_views, width, height, n_points):
        """Private z-buffers (one per worker and view) and projection scratch."""
        n_blocks = max(1, numba.get_num_threads())
        zbufs = self._buf("zbufs", (n_blocks, n_views, width * height), np.uint64)
        tp = self._buf("tp", (n_blocks, max(n_points, 1)), np.uint32)
        tk = self._buf("tk", (n_blocks, max(n_points, 1)), np.int32)
        return zbufs, tp, tk

    @staticmethod
    def _gather_views(points, vrot, vtrans, zbufs, width, height):
        n_views = vrot.shape[0]
        out = np.empty((n_views, width * height, 4), np.float32)
        mask = np.empty((n_views, width * height), np.bool_)
        if n_views:
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
        band_points = _BAND_ROWS * max((w for _, w in sizes), default=1)
        points = self._buf("points", (3, max(total, 1)), np.float32)
        zbufs, tp, tk = self._scratch(vrot.shape[0], width, height, band_points)
        counts = np.empty(rows, np.int64)
        if not cams:
            zbufs.fill(EMPTY_KEY)
        first_index, first_row, firsts = 0, 0, []
        for i, (depth, scale, rays, rot, trans) in enumerate(cams):
            h, w = depth.shape
            firsts.append(first_index)
            _fuse_render_camera(
                depth,
                scale,
                np.ascontiguousarray(rays).reshape(-1),
                rot,
                trans,
                dmin,
                dmax,
                lo,
                hi,
                first_index,
                _BAND_ROWS,
                vrot,
                vtrans,
                intr,
                width,
                height,
                near,
                zbufs,
                tp,
                tk,
                counts[first_row : first_row + h],
                points[0],
                points[1],
                points[2],
                i == 0,
            )
            first_index += h * w
            first_row += h
        images, mask = self._gather_views(points, vrot, vtrans, zbufs, width, height)
        if not want_cloud:
            return images, mask, None
        if not cams:
            return images, mask, []
        offsets = np.zeros(rows + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        row_src = np.concatenate(
            [np.arange(h, dtype=np.int64) * w + f for (h, w), f in zip(sizes, firsts)]
        )
        row_width = np.concatenate([np.full(h, w, np.int64) for h, w in sizes])
        row_pix = np.concatenate([np.arange(h, dtype=np.int64) * w for h, w in sizes])
        xyz, out_pix = np.empty((offsets[-1], 3), np.float32), np.empty(offsets[-1], np.int64)
        _compact(
            points[0], points[1], points[2], row_src, row_width, row_pix, offsets[:-1], xyz, out_pix
        )
        parts, first_row = [], 0
        for h, _ in sizes:
            a, b = offsets[first_row], offsets[first_row + h]
            parts.append((xyz[a:b], out_pix[a:b]))
            first_row += h
        return images, mask, parts

    def render(self, points, vrot, vtrans, intr, width, height, near):
        """Z-buffer an explicit (N, 3) cloud (used after voxel downsampling)."""
        pts = np.ascontiguousarray(np.asarray(points, np.float32).T)
        zbufs, tp, tk = self._scratch(vrot.shape[0], width, height, _CHUNK_POINTS)
        _render_points(
            pts[0],
            pts[1],
            pts[2],
            _CHUNK_POINTS,
            vrot,
            vtrans,
            intr,
            width,
            height,
            near,
            zbufs,
            tp,
            tk,
        )
        return self._gather_views(pts, vrot, vtrans, zbufs, width, height)


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
