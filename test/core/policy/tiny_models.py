"""Tiny real ONNX models with the exporter's interface, and numpy re-implementations of them.

The graphs are written with ``onnx.helper`` from the same weights the numpy functions use, so a
test can run a model directory through ``OnnxPolicy`` and through plain numpy independently.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from clamp_core.perception import CameraConfig, PerceptionConfig, ViewConfig
from clamp_core.policy import PolicyMetadata, ScheduleConfig

JOINTS = [f"{s}_{j}" for s in ("left", "right") for j in ("j0", "j1", "j2", "j3", "j4", "j5", "g")]


@dataclass
class TinySpec:
    """Dimensions of a tiny model (what the graphs are built with)."""

    views: int = 2
    height: int = 8
    width: int = 10
    action_dim: int = 14
    horizon: int = 6
    history: int = 3
    cond_tokens: int = 4
    cond_dim: int = 8
    rgb_cameras: list[str] = field(default_factory=list)
    rgb_size: list[int] = field(default_factory=list)
    """[w, h]."""
    rate_hz: float = 50.0
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class TinyWeights:
    W1: np.ndarray
    b1: np.ndarray
    w: np.ndarray
    s: np.ndarray
    Wc: np.ndarray


def make_weights(spec: TinySpec, seed: int = 0) -> TinyWeights:
    rng = np.random.default_rng(seed)
    n_feat = spec.views * 4 + spec.action_dim * (1 + spec.history) + 3 * len(spec.rgb_cameras)
    nc = spec.cond_tokens * spec.cond_dim
    fa = spec.horizon * spec.action_dim
    f32 = np.float32
    return TinyWeights(
        W1=(rng.normal(size=(n_feat, nc)) / np.sqrt(n_feat)).astype(f32),
        b1=rng.normal(size=nc).astype(f32) * f32(0.1),
        w=rng.uniform(0.5, 1.5, size=spec.action_dim).astype(f32),
        s=rng.normal(size=(spec.horizon, spec.action_dim)).astype(f32) * f32(0.3),
        Wc=(rng.normal(size=(nc, fa)) * 0.2 / np.sqrt(nc)).astype(f32),
    )


def perception_config(spec: TinySpec) -> PerceptionConfig:
    views = [
        ViewConfig(f"v{i}", 50.0 + 5 * i, [0.3 * i, -0.5, 0.8], [0.0, 0.0, 0.1])
        for i in range(spec.views)
    ]
    return PerceptionConfig(
        cameras=[CameraConfig("cam_high"), CameraConfig("cam_low")],
        views=views,
        image_width=spec.width,
        image_height=spec.height,
    )


def make_metadata(spec: TinySpec, **overrides) -> PolicyMetadata:
    rng = np.random.default_rng(123)
    A = spec.action_dim
    lo = rng.uniform(-2.0, 0.0, A)
    hi = lo + rng.uniform(0.5, 3.0, A)
    hi[A - 1] = lo[A - 1]  # a gripper that never moved in the data
    a_lo, a_hi = lo - 0.1, hi + 0.2
    a_hi[0] = a_lo[0]
    kwargs = dict(
        name="tiny",
        preset="test",
        task="transfer_cube",
        instruction="pick up the cube",
        joint_names=(JOINTS * 2)[:A] if A <= 14 else [f"j{i}" for i in range(A)],
        action_dim=A,
        action_horizon=spec.horizon,
        action_history=spec.history,
        control_rate_hz=spec.rate_hz,
        cameras=["cam_high", "cam_low"],
        rgb_cameras=list(spec.rgb_cameras),
        rgb_size=list(spec.rgb_size),
        perception=perception_config(spec),
        normalization={
            "qpos": {"min": lo.tolist(), "max": hi.tolist()},
            "action": {"min": a_lo.tolist(), "max": a_hi.tolist()},
        },
        schedule=spec.schedule,
        cond_tokens=spec.cond_tokens,
        cond_dim=spec.cond_dim,
        versions={"clamp_core": "test"},
        parity_max_abs_diff=0.0,
        created_unix=1.7e9,
    )
    kwargs.update(overrides)
    return PolicyMetadata(**kwargs)


# ------------------------------------------------------------------------------------ graphs
def _const(name: str, values, dtype=np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def encoder_model(spec: TinySpec, wts: TinyWeights) -> onnx.ModelProto:
    """cond = tanh([mean views per channel, qpos, history, mean rgb / 255] @ W1 + b1)."""
    V, H, W, A, Ha = spec.views, spec.height, spec.width, spec.action_dim, spec.history
    Nc, D = spec.cond_tokens, spec.cond_dim
    f = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("views", f, ["batch", V, H, W, 4]),
        helper.make_tensor_value_info("qpos", f, ["batch", A]),
        helper.make_tensor_value_info("action_history", f, ["batch", Ha, A]),
    ]
    inits = [
        _const("flat_views", [-1, V * 4]),
        _const("flat_hist", [-1, Ha * A]),
        _const("cond_shape", [-1, Nc, D]),
        numpy_helper.from_array(wts.W1, "W1"),
        numpy_helper.from_array(wts.b1, "b1"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["views"], ["vm"], axes=[2, 3], keepdims=0),
        helper.make_node("Reshape", ["vm", "flat_views"], ["vf"]),
        helper.make_node("Reshape", ["action_history", "flat_hist"], ["hf"]),
    ]
    parts = ["vf", "qpos", "hf"]
    if spec.rgb_cameras:
        C = len(spec.rgb_cameras)
        w, h = spec.rgb_size
        inputs.append(
            helper.make_tensor_value_info("rgb", TensorProto.UINT8, ["batch", C, h, w, 3])
        )
        inits += [_const("flat_rgb", [-1, C * 3]), _const("inv255", 1 / 255, np.float32)]
        nodes += [
            helper.make_node("Cast", ["rgb"], ["rgbf"], to=f),
            helper.make_node("ReduceMean", ["rgbf"], ["rm"], axes=[2, 3], keepdims=0),
            helper.make_node("Reshape", ["rm", "flat_rgb"], ["rf"]),
            helper.make_node("Mul", ["rf", "inv255"], ["rs"]),
        ]
        parts.append("rs")
    nodes += [
        helper.make_node("Concat", parts, ["feat"], axis=1),
        helper.make_node("MatMul", ["feat", "W1"], ["lin"]),
        helper.make_node("Add", ["lin", "b1"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["act"]),
        helper.make_node("Reshape", ["act", "cond_shape"], ["cond"]),
    ]
    outputs = [helper.make_tensor_value_info("cond", f, ["batch", Nc, D])]
    return _model(nodes, inputs, outputs, inits)


def denoiser_model(spec: TinySpec, wts: TinyWeights) -> onnx.ModelProto:
    """eps = 0.5 tanh(x * w) + (t / T) s + (cond_flat @ Wc) + mean(cond)."""
    F, A, Nc, D = spec.horizon, spec.action_dim, spec.cond_tokens, spec.cond_dim
    T = spec.schedule.num_train_steps
    f = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("noisy_actions", f, ["batch", F, A]),
        helper.make_tensor_value_info("timestep", TensorProto.INT64, ["batch"]),
        helper.make_tensor_value_info("cond", f, ["batch", Nc, D]),
    ]
    inits = [
        numpy_helper.from_array(wts.w, "w"),
        numpy_helper.from_array(wts.s, "s"),
        numpy_helper.from_array(wts.Wc, "Wc"),
        _const("half", 0.5, np.float32),
        _const("invT", 1.0 / T, np.float32),
        _const("col", [-1, 1, 1]),
        _const("flat_cond", [-1, Nc * D]),
        _const("fa", [-1, F, A]),
    ]
    nodes = [
        helper.make_node("Mul", ["noisy_actions", "w"], ["xw"]),
        helper.make_node("Tanh", ["xw"], ["th"]),
        helper.make_node("Mul", ["th", "half"], ["a"]),
        helper.make_node("Cast", ["timestep"], ["tf"], to=f),
        helper.make_node("Mul", ["tf", "invT"], ["tn"]),
        helper.make_node("Reshape", ["tn", "col"], ["tc"]),
        helper.make_node("Mul", ["tc", "s"], ["b"]),
        helper.make_node("Reshape", ["cond", "flat_cond"], ["cf"]),
        helper.make_node("MatMul", ["cf", "Wc"], ["cw"]),
        helper.make_node("Reshape", ["cw", "fa"], ["c"]),
        helper.make_node("ReduceMean", ["cond"], ["cm"], axes=[1, 2], keepdims=1),
        helper.make_node("Add", ["a", "b"], ["ab"]),
        helper.make_node("Add", ["ab", "c"], ["abc"]),
        helper.make_node("Add", ["abc", "cm"], ["eps"]),
    ]
    outputs = [helper.make_tensor_value_info("eps", f, ["batch", F, A])]
    return _model(nodes, inputs, outputs, inits)


def write_model(
    model_dir: Path,
    spec: TinySpec,
    meta: PolicyMetadata | None = None,
    weights: TinyWeights | None = None,
) -> TinyWeights:
    """Write a model directory built from ``spec`` (the graphs) and ``meta`` (default: the
    metadata that fits ``spec``); returns the weights."""
    model_dir.mkdir(parents=True, exist_ok=True)
    wts = weights or make_weights(spec)
    onnx.save(encoder_model(spec, wts), model_dir / "encoders.onnx")
    onnx.save(denoiser_model(spec, wts), model_dir / "denoiser.onnx")
    (meta or make_metadata(spec)).save(model_dir)
    return wts


# ------------------------------------------------------------------------ numpy re-implementation
def np_encoders(spec: TinySpec, wts: TinyWeights, views, qpos_n, hist_n, rgb=None) -> np.ndarray:
    """(V, H, W, 4), (A,), (Ha, A)[, (C, h, w, 3)] -> (1, Nc, D) float64."""
    parts = [views.astype(np.float64).mean(axis=(1, 2)).ravel(), qpos_n, hist_n.ravel()]
    if rgb is not None:
        parts.append(rgb.astype(np.float64).mean(axis=(1, 2)).ravel() / 255.0)
    feat = np.concatenate(parts)
    cond = np.tanh(feat @ wts.W1.astype(np.float64) + wts.b1)
    return cond.reshape(1, spec.cond_tokens, spec.cond_dim)


def np_eps(spec: TinySpec, wts: TinyWeights, x, t, cond) -> np.ndarray:
    """(B, F, A), (B,) int64, (B, Nc, D) -> (B, F, A) float64."""
    T = spec.schedule.num_train_steps
    a = 0.5 * np.tanh(x * wts.w.astype(np.float64))
    b = (t.astype(np.float64) / T)[:, None, None] * wts.s
    c = (cond.reshape(len(cond), -1) @ wts.Wc.astype(np.float64)).reshape(x.shape)
    return a + b + c + cond.mean(axis=(1, 2))[:, None, None]


def replace_spec(spec: TinySpec, **kw) -> TinySpec:
    return dataclasses.replace(spec, **kw)


# ------------------------------------------------------------------ a model that sees colour only
def color_model_graphs(meta: PolicyMetadata) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Graphs with ``meta``'s interface whose chunk depends on the RGB inputs only: the
    encoders put m = the mean colour of each rgb camera / 255 ((C * 3,), camera-major) into the
    first C * 3 entries of cond; the denoiser predicts x0[f, a] = 2 m[a % (C * 3)] - 1 whatever
    the noisy actions and the timestep (for a schedule with prediction_type 'sample')."""
    V, H, W, _ = meta.views_shape
    A, F, Ha = meta.action_dim, meta.action_horizon, meta.action_history
    Nc, D = meta.cond_tokens, meta.cond_dim
    C = len(meta.rgb_cameras)
    w, h = meta.rgb_size
    M = 3 * C
    if not C or Nc * D < M:
        raise ValueError(f"needs rgb_cameras and cond_tokens * cond_dim >= {M}")
    f = TensorProto.FLOAT
    place = np.zeros((M, Nc * D), np.float32)
    place[np.arange(M), np.arange(M)] = 1.0
    enc = _model(
        [
            helper.make_node("Cast", ["rgb"], ["rgbf"], to=f),
            helper.make_node("ReduceMean", ["rgbf"], ["rm"], axes=[2, 3], keepdims=0),
            helper.make_node("Reshape", ["rm", "flat_rgb"], ["rf"]),
            helper.make_node("Mul", ["rf", "inv255"], ["m"]),
            helper.make_node("MatMul", ["m", "place"], ["cf"]),
            helper.make_node("Reshape", ["cf", "cond_shape"], ["cond"]),
        ],
        [
            helper.make_tensor_value_info("views", f, ["batch", V, H, W, 4]),
            helper.make_tensor_value_info("qpos", f, ["batch", A]),
            helper.make_tensor_value_info("action_history", f, ["batch", Ha, A]),
            helper.make_tensor_value_info("rgb", TensorProto.UINT8, ["batch", C, h, w, 3]),
        ],
        [helper.make_tensor_value_info("cond", f, ["batch", Nc, D])],
        [
            _const("flat_rgb", [-1, M]),
            _const("inv255", 1 / 255, np.float32),
            numpy_helper.from_array(place, "place"),
            _const("cond_shape", [-1, Nc, D]),
        ],
    )
    pick = np.zeros((Nc * D, F * A), np.float32)
    cols = np.arange(F * A)
    pick[(cols % A) % M, cols] = 2.0
    den = _model(
        [
            helper.make_node("Reshape", ["cond", "flat_cond"], ["cf"]),
            helper.make_node("MatMul", ["cf", "pick"], ["x2"]),
            helper.make_node("Sub", ["x2", "one"], ["x0"]),
            helper.make_node("Reshape", ["x0", "fa"], ["eps"]),
        ],
        [
            helper.make_tensor_value_info("noisy_actions", f, ["batch", F, A]),
            helper.make_tensor_value_info("timestep", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("cond", f, ["batch", Nc, D]),
        ],
        [helper.make_tensor_value_info("eps", f, ["batch", F, A])],
        [
            _const("flat_cond", [-1, Nc * D]),
            numpy_helper.from_array(pick, "pick"),
            _const("one", 1.0, np.float32),
            _const("fa", [-1, F, A]),
        ],
    )
    return enc, den


def write_color_model(model_dir: Path, meta: PolicyMetadata) -> PolicyMetadata:
    """A model directory with ``meta``'s interface (it needs ``rgb_cameras``) whose chunk is
    :func:`color_chunk` of its RGB inputs: the graphs of :func:`color_model_graphs`, the
    schedule's prediction_type 'sample' (the denoiser's output is x0, so the DDIM loop ends on
    it whatever the noise), and ``use_color`` exactly on the rgb cameras (as training and
    export write it). Returns the metadata written."""
    from clamp_core.perception import PerceptionConfig

    perception = PerceptionConfig.from_dict(meta.perception)
    for c in perception.cameras:
        c.use_color = c.name in meta.rgb_cameras
    schedule = dict(meta.schedule_config().to_dict(), prediction_type="sample")
    meta = dataclasses.replace(meta, perception=perception.to_dict(), schedule=schedule)
    model_dir.mkdir(parents=True, exist_ok=True)
    enc, den = color_model_graphs(meta)
    onnx.save(enc, model_dir / meta.files["encoders"])
    onnx.save(den, model_dir / meta.files["denoiser"])
    meta.save(model_dir)
    return meta


def color_chunk(meta: PolicyMetadata, rgb: dict[str, np.ndarray]) -> np.ndarray:
    """(F, A) float64: the chunk of a :func:`write_color_model` model for the RGB inputs
    ``rgb`` (camera -> (h, w, 3) uint8, already at rgb_size), in numpy."""
    m = np.concatenate(
        [np.asarray(rgb[c], np.float64).mean(axis=(0, 1)) / 255.0 for c in meta.rgb_cameras]
    )
    a = np.arange(meta.action_dim)
    x0 = np.tile(2.0 * m[a % len(m)] - 1.0, (meta.action_horizon, 1))
    return meta.action_normalizer().unnormalize(x0).astype(np.float64)
