"""Model metadata: JSON round trip, atomic save, validation with messages that name the field,
and the node-side compatibility check that lists every mismatch at once."""

from __future__ import annotations

import copy
import json

import pytest

from clamp_core.perception import ViewConfig
from clamp_core.policy import (
    MetadataError,
    MetadataMismatch,
    PolicyMetadata,
    ScheduleConfig,
    check_compatible,
)
from test.core.policy.tiny_models import TinySpec, make_metadata, perception_config

SPEC = TinySpec()


@pytest.fixture
def meta() -> PolicyMetadata:
    return make_metadata(SPEC)


def test_save_load_round_trip(tmp_path, meta):
    path = meta.save(tmp_path)
    assert path == tmp_path / "metadata.json"
    assert [p.name for p in tmp_path.iterdir()] == ["metadata.json"]  # no partial file left
    for where in (tmp_path, path):
        again = PolicyMetadata.load(where)
        assert again.to_dict() == meta.to_dict()
    other = meta.save(tmp_path / "copy.json")
    assert PolicyMetadata.load(other) == meta


def test_stored_forms_are_canonical_and_helpers_rebuild_them(meta):
    d = json.loads(json.dumps(meta.to_dict()))  # plain JSON types only
    assert d["schedule"] == ScheduleConfig().to_dict()
    assert meta.perception_config().to_dict() == perception_config(SPEC).to_dict()
    assert meta.schedule_config() == ScheduleConfig()
    assert meta.views_shape == (SPEC.views, SPEC.height, SPEC.width, 4)
    assert meta.view_names == ["v0", "v1"]
    assert meta.qpos_normalizer().dim == meta.action_normalizer().dim == 14
    assert meta.dt_s == pytest.approx(0.02)


def test_unknown_key_is_named(meta):
    d = meta.to_dict() | {"obs_horizon": 2, "zzz": 1}
    with pytest.raises(MetadataError, match=r"unknown keys \['obs_horizon', 'zzz'\]"):
        PolicyMetadata.from_dict(d)


def test_missing_key_is_named(meta):
    d = meta.to_dict()
    del d["cond_dim"]
    with pytest.raises(MetadataError, match=r"missing keys \['cond_dim'\]"):
        PolicyMetadata.from_dict(d)


@pytest.mark.parametrize("version", [0, 2, "1"])
def test_other_format_versions_are_rejected(tmp_path, meta, version):
    d = meta.to_dict() | {"format_version": version, "new_field_of_v2": True}
    (tmp_path / "metadata.json").write_text(json.dumps(d))
    with pytest.raises(MetadataError, match=rf"format {version!r} .* reads format 1") as e:
        PolicyMetadata.load(tmp_path)
    assert "metadata.json" in str(e.value)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        PolicyMetadata.load(tmp_path)
    (tmp_path / "metadata.json").write_text('{"format_version": 1,')
    with pytest.raises(MetadataError, match="not valid JSON"):
        PolicyMetadata.load(tmp_path)


def _with(meta: PolicyMetadata, **changes) -> dict:
    d = copy.deepcopy(meta.to_dict())
    d.update(changes)
    return d


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(joint_names=["a"] * 14), "joint_names: entries must be unique"),
        (
            dict(joint_names=[f"j{i}" for i in range(13)]),
            "joint_names: has 13 names but action_dim",
        ),
        (dict(action_dim=7), "joint_names: has 14 names but action_dim is 7"),
        (dict(action_horizon=0), "action_horizon: needs an integer >= 1"),
        (dict(action_history=-1), "action_history"),
        (dict(control_rate_hz=0.0), "control_rate_hz"),
        (dict(cond_dim=2.5), "cond_dim"),
        (dict(name=""), "name"),
        (dict(cameras=["cam_high"]), r"cameras: \['cam_high'\] but perception fuses"),
        (dict(rgb_cameras=["cam_left_wrist"], rgb_size=[4, 4]), "rgb_cameras:.*cam_left_wrist"),
        (dict(rgb_cameras=["cam_high"]), r"rgb_size: an RGB branch"),
        (dict(rgb_size=[4, 4]), "rgb_size: must be"),
        (dict(normalization={"qpos": {"min": [0], "max": [1]}}), "normalization: needs exactly"),
        (dict(parity_max_abs_diff=float("nan")), "parity_max_abs_diff"),
        (dict(files={"encoders": "/abs/enc.onnx", "denoiser": "d.onnx"}), "files.encoders"),
        (dict(files={"encoders": "e.onnx"}), "files: needs exactly"),
        (dict(schedule={"prediction_type": "v"}), "schedule: .*prediction_type"),
        (
            dict(schedule={"num_steps": 10}),
            r"schedule: unknown schedule parameters \['num_steps'\]",
        ),
        (dict(perception={"image_width": 4}), "perception: not a valid PerceptionConfig"),
        (dict(perception={"colour": 1}), "perception: .*colour"),
    ],
)
def test_invalid_fields_name_the_field(meta, changes, match):
    with pytest.raises(MetadataError, match=match):
        PolicyMetadata.from_dict(_with(meta, **changes))


def test_normalization_dimension_must_be_action_dim(meta):
    norm = copy.deepcopy(meta.normalization)
    norm["action"] = {"min": [0.0] * 7, "max": [1.0] * 7}
    with pytest.raises(MetadataError, match="normalization.action: has 7 dimensions"):
        PolicyMetadata.from_dict(_with(meta, normalization=norm))
    norm["action"] = {"min": [1.0] * 14, "max": [0.0] * 14}
    with pytest.raises(MetadataError, match="normalization.action: min is above max"):
        PolicyMetadata.from_dict(_with(meta, normalization=norm))


def test_check_compatible_accepts_the_training_configuration(meta):
    check_compatible(
        meta,
        joint_names=list(meta.joint_names),
        perception=perception_config(SPEC),
        action_dim=14,
    )


def test_check_compatible_lists_every_mismatch(meta):
    node = perception_config(SPEC)
    node.views[0].fov_deg = 70.0
    node.views[1].eye = [0.3, -0.5, 0.9]
    node.image_width = 12
    node.base_frame = "table"
    node.workspace_max = [0.6, 0.45, 0.7]
    names = list(meta.joint_names)
    names[0], names[1] = names[1], names[0]
    with pytest.raises(MetadataMismatch) as e:
        check_compatible(meta, joint_names=names, perception=node, action_dim=16)
    msg = str(e.value)
    expected = [
        "action_dim: model has 14 but the node is configured with 16",
        f"joint_names: model has {meta.joint_names} but the node is configured with {names}",
        "perception view image size (w x h): model has 10x8 but the node is configured with 12x8",
        "perception.views.v0.fov_deg: model has 50.0 but the node is configured with 70.0",
        "perception.views.v1.eye: model has [0.3, -0.5, 0.8] but the node is configured with "
        "[0.3, -0.5, 0.9]",
        "perception.base_frame: model has 'world' but the node is configured with 'table'",
        "perception.workspace_max: model has [0.6, 0.45, 0.6] but",
    ]
    for line in expected:
        assert line in msg
    assert len(e.value.mismatches) == len(expected)
    assert "'tiny'" in msg


def test_check_compatible_views_and_cameras():
    spec = TinySpec(rgb_cameras=["cam_low"], rgb_size=[6, 4])
    meta = make_metadata(spec)
    node = perception_config(spec)
    node.views = [node.views[1], node.views[0], ViewConfig("extra")]
    with pytest.raises(MetadataMismatch) as e:
        check_compatible(meta, perception=node, cameras=["cam_high", "cam_wrist"])
    msg = str(e.value)
    assert "perception.views (names, in order): model has ['v0', 'v1'] but the node is " in msg
    assert "['v1', 'v0', 'extra']" in msg
    assert "cameras: model has ['cam_high', 'cam_low'] but the node is configured with" in msg
    assert "rgb_cameras: the model's RGB branch needs ['cam_low'] but the node has no " in msg
    assert len(e.value.mismatches) == 3
    # camera order does not matter to fusion
    check_compatible(meta, cameras=["cam_low", "cam_high"])


def test_check_compatible_ignores_pose_fields_a_view_does_not_use(meta):
    attached = ViewConfig("w", 75.0, attach_frame="left_wrist", offset_xyz=[0, 0, -0.05])
    d = meta.perception_config()
    d.views = [attached]
    m = PolicyMetadata.from_dict(_with(meta, perception=d.to_dict()))
    node = meta.perception_config()
    node.views = [ViewConfig("w", 75.0, eye=[1, 2, 3], attach_frame="left_wrist")]
    node.views[0].offset_xyz = [0.0, 0.0, -0.05]
    check_compatible(m, perception=node)  # eye is unused by an attached view
    node.views[0].offset_rpy = [0.0, 0.1, 0.0]
    with pytest.raises(MetadataMismatch, match="perception.views.w.offset_rpy"):
        check_compatible(m, perception=node)
