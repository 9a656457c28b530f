"""`clamp experiment few-shot`: the configuration, the cell plan and shards, success counting
and confidence intervals against scripted policies, the held-out check, and a tiny study run end
to end and resumed (real MuJoCo episodes, training, ONNX export and closed-loop evaluation)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from clamp_core.cli import main as cli_main
from clamp_core.experiment.config import ExperimentConfigError, FewShotConfig
from clamp_core.experiment.plan import build_plan, parse_shard
from clamp_core.experiment.results import (
    Z95,
    aggregate_records,
    markdown,
    plot_task,
    wilson_interval,
)
from clamp_core.experiment.runner import Study, read_done, write_done
from clamp_core.experiment.stages import HeldOutLeakError, check_pretraining_data

from ..training.toy_data import write_toy_episodes

REPO = Path(__file__).resolve().parents[3]
TINY_MODEL = {
    "view_size": 32,
    "image": {"patch_size": 8, "dim": 48, "layers": 1, "heads": 2},
    "action": {"dim": 32, "heads": 2, "history": 4},
    "text": {"dim": 32, "heads": 2, "max_tokens": 16},
    "denoiser": {"dim": 32, "layers": 1, "cond_layers": 1, "heads": 2},
    "embed_dim": 32,
}


def tiny_config(out: Path, **kw) -> dict:
    """The whole study in miniature: two tasks, 2 + 2 demos, two demo counts, the three arms,
    one training seed, 2 fine-tuning steps evaluated after each, 2 evaluation episodes."""
    d = {
        "name": "tiny",
        "out": str(out),
        "pretrain_tasks": ["screwdriver_in_caddy"],
        "held_out_tasks": ["drawer_open"],
        "pretrain_episodes": 2,
        "demo_counts": [1, 2],
        "fewshot_pool": 2,
        "eval_episodes": 2,
        "training_seeds": [0],
        "smoke_test": True,
        "arms": ["clamp", "scratch", "dp_only"],
        "encoders": ["frozen"],
        "model": TINY_MODEL,
        "schedule": {"prediction_type": "sample"},
        "pretrain_steps": 2,
        "pretrain_batch_size": 4,
        "pretrain_options": {"frame_stride": 8, "val_fraction": 0.0, "warmup_steps": 1},
        "finetune_steps": 2,
        "finetune_batch_size": 4,
        "eval_every": 1,
        "finetune_options": {"frame_stride": 8, "warmup_steps": 1},
        "width": 64,
        "height": 48,
        "gen_workers": 1,
        "export_verify": False,
        "inference_steps": 2,
    }
    d.update(kw)
    return d


def write_yaml(path: Path, d: dict) -> Path:
    path.write_text(yaml.safe_dump(d))
    return path


def done_files(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("done.json")}


# ------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    "change, message",
    [
        ({"held_out_tasks": ["screwdriver_in_caddy"]}, "both pretraining and held-out"),
        ({"pretrain_tasks": ["no_such_task"]}, "clamp generate --list"),
        ({"eval_seed": 100_001}, "seed ranges overlap"),
        ({"fewshot_seed": 100_000}, "seed ranges overlap"),
        ({"smoke_test": False}, "at least 20 episodes"),
        ({"smoke_test": False, "eval_episodes": 20}, "at least 3"),
        ({"arms": ["clamp", "imitation"]}, "arms: 'imitation' unknown"),
        ({"encoders": ["thawed"]}, "encoders"),
        ({"finetune_steps": 3, "eval_every": 2}, "must divide finetune_steps"),
        ({"demo_counts": [2, 1]}, "increasing order"),
        ({"fewshot_pool": 1}, "fewshot_pool 1 < the largest demo count 2"),
        ({"finetune_options": {"steps": 5}}, "set by the study itself"),
        ({"execution": {"mode": "teleport"}}, "execution"),
        ({"preset": "huge"}, "preset 'huge' unknown"),
        ({"start_jitter": 0.1, "rest_steps": 0}, "needs rest_steps"),
        ({"training_seeds": [0, 0]}, "duplicates"),
        ({"headline_demos": 3}, "headline_demos 3 is not one of demo_counts"),
        ({"preset": "paper", "model": {}}, "model.rgb.enabled"),
        ({"model": {"view_tokens": 5}}, "view_tokens"),
    ],
)
def test_config_invariants_say_what_to_change(tmp_path, change, message):
    d = tiny_config(tmp_path)
    d.update(change)
    with pytest.raises(ExperimentConfigError, match=message):
        FewShotConfig.from_dict(d)


def test_config_rejects_unknown_settings_and_fills_the_pool(tmp_path):
    with pytest.raises(ExperimentConfigError, match="unknown settings \\['typo'\\]"):
        FewShotConfig.from_dict({**tiny_config(tmp_path), "typo": 1})
    cfg = FewShotConfig.from_dict({**tiny_config(tmp_path), "fewshot_pool": 0})
    assert cfg.fewshot_pool == 2 + 5
    assert cfg.variants() == ["clamp-frozen", "scratch", "dp_only-frozen"]
    assert cfg.eval_steps() == [1, 2]


def test_plan_is_a_dag_and_shards_partition_it(tmp_path):
    cfg = FewShotConfig.from_dict(
        tiny_config(tmp_path, training_seeds=[0, 1], encoders=["frozen", "unfrozen"])
    )
    cells = build_plan(cfg)
    ids = [c.id for c in cells]
    assert len(ids) == len(set(ids))
    pos = {c: i for i, c in enumerate(ids)}
    for c in cells:  # every dependency comes earlier
        assert all(pos[d] < pos[c.id] for d in c.deps), c.id
    stages = [c.stage for c in cells]
    # 2 seeds x 2 demo counts x (clamp x2, dp_only x2, scratch) fine-tuning runs
    assert stages.count("finetune") == 2 * 2 * 5
    assert stages.count("evaluate") == 2 * 2 * 5 * 2 + 2 * 2  # + step 0 of each pretraining
    assert stages.count("pretrain") == 2 * 2
    scratch = [c for c in cells if c.stage == "finetune" and c.params["arm"] == "scratch"]
    assert all(not any(d.startswith("pretrain/") for d in c.deps) for c in scratch)
    # the costly scratch runs come after every pretrained run; seed 1's pretraining comes
    # after seed 0's pretrained fine-tuning (partial results cover every pretrained arm early)
    tuned = [pos[c.id] for c in cells if c.stage == "finetune" and c.params["arm"] != "scratch"]
    assert max(tuned) < min(pos[c.id] for c in scratch)
    first_seed1_pre = pos["pretrain/clamp/seed1"]
    assert all(
        pos[c.id] < first_seed1_pre
        for c in cells
        if c.stage == "finetune" and c.params["arm"] != "scratch" and c.params["seed"] == 0
    )
    # headline_demos: only the order of the scratch runs changes, that count first, every seed
    cfg2 = FewShotConfig.from_dict(
        tiny_config(
            tmp_path,
            training_seeds=[0, 1],
            encoders=["frozen", "unfrozen"],
            headline_demos=cfg.demo_counts[-1],
        )
    )
    cells2 = build_plan(cfg2)
    assert sorted(c.id for c in cells2) == sorted(ids)
    order = [
        (c.params["demos"], c.params["seed"])
        for c in cells2
        if c.stage == "finetune" and c.params["arm"] == "scratch"
    ]
    last, first = cfg.demo_counts[-1], cfg.demo_counts[0]
    assert order == [(last, 0), (last, 1), (first, 0), (first, 1)]
    # shards: disjoint, together every cell, the same on every call (a stable hash)
    work = [c for c in cells if c.stage != "aggregate"]
    for n in (1, 2, 3, 7):
        parts = [{c.id for c in work if c.shard(n) == i} for i in range(n)]
        assert sum(len(p) for p in parts) == len(work)
        assert set().union(*parts) == {c.id for c in work}
    assert [c.shard(5) for c in work] == [c.shard(5) for c in build_plan(cfg) if c in work]
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) == (0, 1)
    for bad in ("4/4", "x", "1/0", "-1/3"):
        with pytest.raises(ValueError):
            parse_shard(bad)
    # one pretraining run shared by every training seed
    shared = FewShotConfig.from_dict(
        tiny_config(tmp_path, training_seeds=[0, 1], pretrain_per_seed=False)
    )
    assert [c.id for c in build_plan(shared) if c.stage == "pretrain"] == [
        "pretrain/clamp/seed0",
        "pretrain/dp_only/seed0",
    ]


@pytest.mark.parametrize("name", ["few_shot_cpu", "few_shot_paper"])
def test_shipped_configs_pass_a_dry_run(name, capsys):
    path = REPO / "config" / "experiments" / f"{name}.yaml"
    assert cli_main(["experiment", "few-shot", "--config", str(path), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    cfg = FewShotConfig.from_yaml(path)
    assert not cfg.smoke_test and cfg.eval_episodes >= 20 and len(cfg.training_seeds) >= 3
    assert {"clamp", "scratch", "dp_only"} <= set(cfg.arms)
    assert plan["cells"]["finetune"] == (
        len(cfg.held_out_tasks)
        * len(cfg.variants())
        * len(cfg.demo_counts)
        * len(cfg.training_seeds)
    )
    assert plan["cells_done"] >= 0 and plan["examples"]["finetune"]
    if name == "few_shot_paper":
        assert cfg.preset == "paper" and plan["model"]["view_size"] == 224
        assert plan["episodes_to_generate"] >= 4000 and cfg.pretrain_nproc_per_node > 1
        paper_tasks = {
            "drawer_open",
            "mug_on_plate",
            "pen_in_container",
            "can_opener_in_caddy",
            "screwdriver_in_caddy",
            "plate_on_rack",
        }
        assert paper_tasks <= set(cfg.pretrain_tasks) | set(cfg.held_out_tasks)
    else:
        assert cfg.preset == "cpu-small"
    # a shard's dry run lists only its cells
    assert (
        cli_main(
            [
                "experiment",
                "few-shot",
                "--config",
                str(path),
                "--dry-run",
                "--json",
                "--shard",
                "1/3",
            ]
        )
        == 0
    )
    part = json.loads(capsys.readouterr().out)
    assert part["shard"] == "1/3" and part["this_shard"]["finetune"] < plan["cells"]["finetune"]


def test_cli_refuses_bad_arguments(tmp_path, capsys):
    cfg = write_yaml(tmp_path / "s.yaml", tiny_config(tmp_path / "out"))
    assert cli_main(["experiment", "few-shot", "--config", str(cfg), "--shard", "2/2"]) == 2
    assert "--shard" in capsys.readouterr().err
    bad = write_yaml(tmp_path / "b.yaml", {**tiny_config(tmp_path / "out"), "eval_every": 3})
    assert cli_main(["experiment", "few-shot", "--config", str(bad), "--dry-run"]) == 2
    assert "eval_every" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing was started


# ------------------------------------------------------------------------------ counting
def test_wilson_interval_reference_values():
    z2 = Z95**2
    for n in (1, 3, 20, 50):
        lo, hi = wilson_interval(n, n)  # all successes: closed form n / (n + z^2)
        assert hi == 1.0 and math.isclose(lo, n / (n + z2), rel_tol=1e-12)
        lo, hi = wilson_interval(0, n)  # none: z^2 / (n + z^2)
        assert lo == 0.0 and math.isclose(hi, z2 / (n + z2), rel_tol=1e-12)
    lo, hi = wilson_interval(10, 20)  # textbook value for 10/20
    assert abs(lo - 0.2993) < 1e-4 and abs(hi - 0.7007) < 1e-4
    lo, hi = wilson_interval(3, 40)  # asymmetric near 0, never below 0
    assert 0 < lo < 3 / 40 < hi and hi - 3 / 40 > 3 / 40 - lo
    for k in range(21):  # shrinks with more episodes at the same rate
        a = wilson_interval(k, 20)
        b = wilson_interval(2 * k, 40)
        assert a[0] <= k / 20 <= a[1] and b[1] - b[0] < a[1] - a[0]
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_scripted_policies_are_counted_with_their_known_outcomes(tmp_path):
    """The task's scripted expert and a do-nothing policy through `clamp eval sim`'s closed
    loop (rested start, safety filter), then the study's counting: the expert succeeds on every
    seed, holding still on none, and the intervals are the closed forms of k = n and k = 0."""
    from clamp_core.experiment.scripted import evaluate_scripted

    records = []
    for kind, seed_sets in (
        ("expert", [[300000, 300001], [300002, 300003]]),
        ("hold", [[300000], [300001]]),
    ):
        for training_seed, seeds in enumerate(seed_sets):
            r = evaluate_scripted(kind, "drawer_open", seeds)
            assert r["settle_steps"] == 5 and r["safety"] is True
            assert r["successes"] == sum(e["success"] for e in r["episodes"])
            assert [e["seed"] for e in r["episodes"]] == seeds
            if kind == "hold":  # it never moved the drawer: ran to the task's time limit
                assert all(e["steps"] == 500 and e["max_progress"] == 0 for e in r["episodes"])
            records.append(
                {
                    "task": "drawer_open",
                    "variant": kind,
                    "demos": 0,
                    "seed": training_seed,
                    "step": 1,
                    "successes": r["successes"],
                    "episodes": len(r["episodes"]),
                }
            )
    rows = {r["variant"]: r for r in aggregate_records(records, seeds=[0, 1])}
    z2 = Z95**2
    expert, hold = rows["expert"], rows["hold"]
    assert (expert["successes"], expert["episodes"], expert["rate"]) == (4, 4, 1.0)
    assert math.isclose(expert["ci95"][0], 4 / (4 + z2)) and expert["ci95"][1] == 1.0
    assert expert["seed_rates"] == [1.0, 1.0] and expert["seed_std"] == 0.0
    assert (hold["successes"], hold["episodes"], hold["rate"]) == (0, 2, 0.0)
    assert hold["ci95"][0] == 0.0 and math.isclose(hold["ci95"][1], z2 / (2 + z2))
    assert expert["complete"] and hold["complete"]
    # a missing training seed shows
    (partial,) = aggregate_records(records[:1], seeds=[0, 1])
    assert not partial["complete"]


def test_aggregation_pools_seeds_and_reports_their_spread():
    recs = [
        {
            "task": "t",
            "variant": "clamp-frozen",
            "demos": 5,
            "seed": s,
            "step": 10,
            "successes": k,
            "episodes": 20,
        }
        for s, k in ((0, 4), (1, 10), (2, 16))
    ]
    (row,) = aggregate_records(recs, seeds=[0, 1, 2])
    assert row["successes"] == 30 and row["episodes"] == 60 and row["rate"] == 0.5
    assert row["seed_rates"] == [0.2, 0.5, 0.8]
    assert math.isclose(row["seed_mean"], 0.5) and math.isclose(row["seed_std"], 0.3)
    assert row["ci95"] == list(wilson_interval(30, 60))
    with pytest.raises(ValueError, match="two records"):
        aggregate_records(recs + recs[:1])


# ------------------------------------------------------------------------------ held-out check
def test_pretraining_data_with_a_held_out_task_is_refused(tmp_path, capsys):
    """Checked from the episode files' task attributes: a drawer_open episode among the
    pretraining data stops the study before any pretraining, whatever the config says."""
    d = tiny_config(tmp_path / "out")
    cfg = FewShotConfig.from_dict(d)
    study = Study(cfg)
    pre = study.by_id["generate/pretrain/screwdriver_in_caddy/000"]
    few = study.by_id["generate/fewshot/drawer_open/000"]
    write_toy_episodes(pre.dir(cfg), 2, frames=6, task="screwdriver_in_caddy")
    write_toy_episodes(few.dir(cfg), 2, frames=6, task="drawer_open", seed=200000)
    assert check_pretraining_data([pre.dir(cfg)], ["drawer_open"]) == {"screwdriver_in_caddy": 2}
    write_toy_episodes(pre.dir(cfg) / "leak", 1, frames=6, task="drawer_open", seed=7)
    with pytest.raises(HeldOutLeakError, match="drawer_open: 1 episode"):
        check_pretraining_data([pre.dir(cfg)], ["drawer_open"])
    for c in (pre, few):  # generation "finished": the next cells are the pretraining runs
        write_done(c.dir(cfg), {"cell": c.id, "stage": "generate", "wall_s": 0.0, "result": {}})
    with pytest.raises(HeldOutLeakError):
        study.run(log=lambda m: None)
    assert read_done(study.by_id["pretrain/clamp/seed0"].dir(cfg)) is None
    assert not (study.by_id["pretrain/clamp/seed0"].dir(cfg) / "checkpoints").exists()
    cfg_path = write_yaml(tmp_path / "s.yaml", d)
    assert cli_main(["experiment", "few-shot", "--config", str(cfg_path)]) == 1
    assert "held-out task" in capsys.readouterr().err


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("few_shot")
    d = tiny_config(root / "out", cache_dir=str(root / "views"), results_dir=str(root / "results"))
    path = write_yaml(root / "tiny.yaml", d)
    return root, path, FewShotConfig.from_dict(d)


def _run(path: Path, capsys) -> dict:
    assert cli_main(["experiment", "few-shot", "--config", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_tiny_study_runs_end_to_end_and_resumes(tiny_study, capsys):
    import cv2

    root, path, cfg = tiny_study
    out, res = Path(cfg.out), Path(cfg.results_dir)
    first = _run(path, capsys)
    cells = build_plan(cfg)
    work = [c for c in cells if c.stage != "aggregate"]
    assert first["complete"] and first["counts"]["ran"] == len(work)
    assert first["counts"]["ran aggregate"] == 1
    # every cell finished with a marker that records its stage's wall time
    for c in cells:
        d = read_done(c.dir(cfg))
        assert d is not None and d["cell"] == c.id and d["wall_s"] >= 0, c.id
    assert not list(out.rglob("*.partial")) and not list(out.rglob("running.json"))
    # the data: held-out task only in the few-shot pool, from the files
    doc = json.loads((res / "results.json").read_text())
    assert doc["complete"] and doc["pretraining_data_tasks"] == {
        "pretrain/clamp/seed0": {"screwdriver_in_caddy": 2},
        "pretrain/dp_only/seed0": {"screwdriver_in_caddy": 2},
    }
    # a row per held-out task x arm x demo count x step (step 0: the pretrained arms)
    got = {(r["task"], r["variant"], r["demos"], r["step"]) for r in doc["rows"]}
    want = {
        ("drawer_open", v, n, s)
        for v in ("clamp-frozen", "dp_only-frozen", "scratch")
        for n in (1, 2)
        for s in ((0, 1, 2) if v != "scratch" else (1, 2))
    }
    assert got == want
    for r in doc["rows"]:
        assert r["episodes"] == 2 and 0 <= r["successes"] <= 2 and r["complete"]
        lo, hi = r["ci95"]
        assert 0 <= lo <= r["rate"] <= hi <= 1 and r["seeds"].keys() == {"0"}
    assert set(doc["stage_wall_times"]) == {"generate", "pretrain", "finetune", "evaluate"}
    assert doc["stage_wall_times"]["evaluate"]["cells"] == 14
    assert "Wilson" in doc["ci_method"]
    md = (res / "results.md").read_text()
    assert "| arm | demos | step 0 | step 1 | step 2 |" in md
    for v in ("clamp-frozen", "dp_only-frozen", "scratch"):
        assert md.count(f"| {v} | ") == 2
    assert "## Wall time per stage" in md and "![drawer_open](drawer_open.png)" in md
    png = cv2.imread(str(res / "drawer_open.png"))
    assert png is not None and png.shape[0] > 300 and png.shape[1] > 600
    assert len(np.unique(png.reshape(-1, 3), axis=0)) > 20  # lines and bands, not blank
    # the models were evaluated on the unseen seeds, through clamp eval sim's function
    ev = json.loads(next(out.rglob("evaluate/**/step000002/eval.json")).read_text())
    assert [e["seed"] for e in ev["episodes"]] == [cfg.eval_seed, cfg.eval_seed + 1]
    assert ev["settle_steps"] == cfg.settle_steps and ev["execution"]["mode"] == "async"

    # a second invocation redoes nothing
    before = done_files(out)
    second = _run(path, capsys)
    assert second["counts"].get("ran", 0) == 0
    assert second["counts"]["skipped (done)"] == len(work)
    assert done_files(out) == before

    # a run killed during one fine-tuning run's evaluations: the last evaluation's marker
    # missing (its eval.json already written), the one before it with only a partial file
    ft = [c for c in cells if c.stage == "finetune"][-1]
    e1, e2 = [c for c in cells if c.stage == "evaluate" and c.deps == (ft.id,)]
    (e2.dir(cfg) / "done.json").unlink()
    (e1.dir(cfg) / "done.json").unlink()
    (e1.dir(cfg) / "eval.json").unlink()
    (e1.dir(cfg) / ".done.json.99999.partial").write_text('{"cell": "half wr')
    eval2 = (e2.dir(cfg) / "eval.json").stat().st_mtime_ns
    ckpt = (ft.dir(cfg) / "checkpoints" / "step_000002.pt").stat().st_mtime_ns
    third = _run(path, capsys)
    assert third["counts"]["ran"] == 2 and third["counts"]["ran evaluate"] == 2
    after = done_files(out)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {str((c.dir(cfg) / "done.json").relative_to(out)) for c in (e1, e2)}
    # e2's finished evaluation was reused, not redone; e1 evaluated again from the checkpoint
    assert (e2.dir(cfg) / "eval.json").stat().st_mtime_ns == eval2
    assert (e1.dir(cfg) / "eval.json").is_file()
    assert (ft.dir(cfg) / "checkpoints" / "step_000002.pt").stat().st_mtime_ns == ckpt
    assert json.loads((res / "results.json").read_text())["complete"]

    # settings that would change finished cells are refused; growing the grid is not
    settings = yaml.safe_load(path.read_text())
    changed = write_yaml(root / "changed.yaml", {**settings, "settle_steps": 0})
    args = ["experiment", "few-shot", "--config", str(changed)]
    assert cli_main(args) == 2
    assert "settle_steps: 5 -> 0" in capsys.readouterr().err
    assert cli_main([*args, "--dry-run", "--json"]) == 0
    assert "settle_steps" in json.loads(capsys.readouterr().out)["config_changed"]
    grown = FewShotConfig.from_dict({**settings, "training_seeds": [0, 1]})
    Study(grown).check_config(record=False)  # more cells: accepted


def test_markdown_and_plot_of_partial_results(tmp_path):
    """Interim results (one seed of three evaluated) are marked, and the figure still draws."""
    recs = [
        {
            "task": "drawer_open",
            "variant": v,
            "demos": 5,
            "seed": 0,
            "step": s,
            "successes": k,
            "episodes": 20,
        }
        for v, ks in (("clamp-frozen", (3, 9, 14)), ("scratch", (0, 2, 5)))
        for s, k in zip((100, 200, 300), ks, strict=True)
    ]
    rows = aggregate_records(recs, seeds=[0, 1, 2])
    doc = {"study": "t", "ci_method": "Wilson", "rows": rows, "config": {}, "stage_wall_times": {}}
    md = markdown(doc)
    assert "0.70 [0.48, 0.85] (14/20)*" in md
    assert "clamp-frozen - scratch at 5 demos, step 300: +45 points" in md
    p = plot_task(rows, "drawer_open", tmp_path / "d.png", "t")
    assert p.is_file() and p.stat().st_size > 10_000
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".partial")]


def test_the_legend_names_an_arm_drawn_only_in_a_later_panel():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clamp_core.experiment.results import legend_entries

    fig, axes = plt.subplots(1, 2)
    axes[0].plot([0, 1], [0, 1], label="CLAMP")
    axes[1].plot([0, 1], [0, 1], label="CLAMP")
    axes[1].plot([0, 1], [1, 0], label="scratch")
    _, labels = legend_entries(axes)
    plt.close(fig)
    assert labels == ["CLAMP", "scratch"]
