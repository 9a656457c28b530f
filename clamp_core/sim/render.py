"""Offscreen RGB-D rendering of a MuJoCo model's cameras: one GL context, one scene, and one
render pass per camera that yields both the colour image and metric depth.

On machines without a GPU this runs on Mesa's software rasteriser, where each pass costs about
as much in vertex work (the arm meshes) as in pixels, so passes are what to save. The output is
bit-identical to ``mujoco.Renderer``'s RGB pass followed by its depth pass (tested).
"""

from __future__ import annotations

import numpy as np


class RgbdRenderer:
    """Renders ``(RGB (H, W, 3) uint8, depth (H, W) float32 m along the optical axis, 0 where
    nothing was hit)`` for the model's named cameras.

    ``update(data)`` builds the scene's geometry once per state; ``render(camera)`` then only
    moves the scene's camera (and its headlight) before drawing. Shadows and reflections are
    off (the cameras are not meant to show them, and they cost a pass each on the CPU).
    """

    def __init__(self, model, width: int, height: int, max_geom: int = 10000):
        import mujoco

        self.mj = mujoco
        self.model = model
        self.width, self.height = width, height
        if width > model.vis.global_.offwidth or height > model.vis.global_.offheight:
            raise ValueError(
                f"{width}x{height} exceeds the model's offscreen buffer "
                f"{model.vis.global_.offwidth}x{model.vis.global_.offheight}; raise "
                "<visual><global offwidth=... offheight=...> in the model"
            )
        self._gl = mujoco.GLContext(width, height)
        self._gl.make_current()
        self._con = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150.value)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN.value, self._con)
        # reversed z: the depth buffer holds 0 at the far plane, precision where it matters
        self._con.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR
        self.scene = mujoco.MjvScene(model, maxgeom=max_geom)
        self.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._option = mujoco.MjvOption()
        self._rect = mujoco.MjrRect(0, 0, width, height)
        self._cameras: dict[str, object] = {}
        self._data = None
        # what glReadPixels returns: bottom row first
        self._rgb_gl = np.empty((height, width, 3), np.uint8)
        self._depth_gl = np.empty((height, width), np.float32)
        self._depth_f64 = np.empty((height, width), np.float64)
        # window depth -> metric depth, with the float32 constants glFrustum uses (as
        # mujoco.Renderer computes them, so the result matches it bit for bit)
        extent = model.stat.extent
        znear = np.float32(model.vis.map.znear * extent)
        zfar = np.float32(model.vis.map.zfar * extent)
        c = -(zfar + znear) / (zfar - znear)
        d = -(np.float32(2) * zfar * znear) / (zfar - znear)
        self._c = np.float32(-0.5) * c - np.float32(0.5)
        self._d = np.float32(-0.5) * d
        self._background_m = 0.99 * model.vis.map.zfar * extent
        self.two_pass = needs_depth_pass(model, self._option, self.scene.flags)
        """Whether depth needs a pass of its own (see ``needs_depth_pass``)."""

    def _camera(self, name: str):
        cam = self._cameras.get(name)
        if cam is None:
            cid = self.mj.mj_name2id(self.model, self.mj.mjtObj.mjOBJ_CAMERA.value, name)
            if cid < 0:
                raise ValueError(f"the model has no camera '{name}'")
            cam = self.mj.MjvCamera()
            cam.type = self.mj.mjtCamera.mjCAMERA_FIXED
            cam.fixedcamid = cid
            self._cameras[name] = cam
        return cam

    def update(self, data) -> None:
        """Take the geometry of ``data``'s current state (after a step, before ``render``)."""
        mj = self.mj
        mj.mjv_updateScene(
            self.model,
            data,
            self._option,
            None,
            mj.MjvCamera(),
            mj.mjtCatBit.mjCAT_ALL.value,
            self.scene,
        )
        self._data = data

    def render(self, name: str, color: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        """RGB (H, W, 3) uint8 and depth (H, W) float32 metres of camera ``name`` for the state
        of the last ``update``; fresh arrays that the caller owns. ``color=False``: depth only
        (RGB None), from the flat-coloured depth pass alone, which costs less than a lit one."""
        if self._data is None:
            raise RuntimeError("RgbdRenderer.render before update(data)")
        if self._con is None:
            raise RuntimeError("RgbdRenderer.render after close()")
        mj = self.mj
        mj.mjv_updateCamera(self.model, self._data, self._camera(name), self.scene)
        mj.mjv_makeLights(self.model, self._data, self.scene)  # the headlight follows the camera
        self._gl.make_current()
        if not color:
            self._depth_pass()
            return None, self._metric_depth()
        mj.mjr_render(self._rect, self.scene, self._con)
        if self.two_pass:
            mj.mjr_readPixels(self._rgb_gl, None, self._rect, self._con)
            self._depth_pass()
        else:
            mj.mjr_readPixels(self._rgb_gl, self._depth_gl, self._rect, self._con)
        rgb = np.empty_like(self._rgb_gl)
        np.copyto(rgb, self._rgb_gl[::-1])
        return rgb, self._metric_depth()

    def _depth_pass(self) -> None:
        # as mujoco.Renderer renders depth: flat colours, translucent surfaces drawn opaque
        flags, f = self.scene.flags, self.mj.mjtRndFlag
        saved = flags.copy()
        flags[f.mjRND_SEGMENT] = flags[f.mjRND_IDCOLOR] = 1
        try:
            self.mj.mjr_render(self._rect, self.scene, self._con)
            self.mj.mjr_readPixels(None, self._depth_gl, self._rect, self._con)
        finally:
            np.copyto(flags, saved)

    def _metric_depth(self) -> np.ndarray:
        # float64 for the division, as mujoco.Renderer does (float32 loses mm at range)
        z = self._depth_f64
        np.add(self._depth_gl[::-1], self._c, out=z, dtype=np.float64)
        np.divide(self._d, z, out=z)
        depth = z.astype(np.float32)
        depth[depth >= self._background_m] = 0.0  # nothing hit: the far plane
        return depth

    def close(self) -> None:
        """Release the GL resources (safe to call twice)."""
        con, self._con = self._con, None
        gl, self._gl = self._gl, None
        if con is not None:
            con.free()
        if gl is not None:
            gl.free()


def needs_depth_pass(model, option, scene_flags) -> bool:
    """Whether the colour pass's depth buffer differs from a depth pass's: a skybox fills the
    background's depth, and translucent surfaces are blended in without the depth a depth pass
    gives them. Neither is in the ALOHA scenes."""
    import mujoco

    skybox = scene_flags[mujoco.mjtRndFlag.mjRND_SKYBOX] and np.any(
        model.tex_type == mujoco.mjtTexture.mjTEXTURE_SKYBOX
    )
    return bool(skybox) or has_translucent_parts(model, option)


def has_translucent_parts(model, option) -> bool:
    """Whether any geom, site, tendon or skin that ``option`` shows may be drawn translucent
    (0 < alpha < 1 in its own colour or its material's; alpha 0 is not drawn at all)."""
    for kind in ("geom", "site", "tendon", "skin"):
        rgba = getattr(model, f"{kind}_rgba")
        if not len(rgba):
            continue
        groups = getattr(model, f"{kind}_group")
        enabled = np.asarray(getattr(option, f"{kind}group"), bool)
        shown = (groups >= 0) & (groups < len(enabled))
        shown[shown] = enabled[groups[shown]]
        matid = getattr(model, f"{kind}_matid")
        mat_alpha = np.ones(len(rgba))
        if model.nmat:
            has = matid >= 0
            mat_alpha[has] = model.mat_rgba[matid[has], 3]
        translucent = ((rgba[:, 3] > 0) & (rgba[:, 3] < 1)) | ((mat_alpha > 0) & (mat_alpha < 1))
        if np.any(shown & translucent):
            return True
    return False
