"""`clamp experiment few-shot`: the few-shot study of issue 16 (see docs/experiments.md)."""

from __future__ import annotations

import json
import sys


def add_commands(sub) -> None:
    ex = sub.add_parser("experiment", help="studies that run many training / evaluation cells")
    ex_sub = ex.add_subparsers(dest="experiment", required=True)
    fs = ex_sub.add_parser(
        "few-shot",
        help="pretrain on some tasks, fine-tune on few demos of held-out tasks (clamp / "
        "scratch / dp_only), evaluate in closed loop; resumable and shardable",
    )
    fs.add_argument("--config", required=True, help="study YAML (FewShotConfig fields)")
    fs.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="run only the cells whose id hashes to I mod N (machines sharing --config's out)",
    )
    fs.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the configuration and print the cell plan; train nothing",
    )
    fs.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --shard: poll this often for cells that wait on other shards (0: return)",
    )
    fs.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    fs.set_defaults(func=cmd_few_shot)


def cmd_few_shot(args) -> int:
    from ..perception.config import ConfigError
    from ..training.export import ExportError
    from ..training.train import CheckpointError
    from .config import FewShotConfig
    from .plan import parse_shard
    from .runner import Study, StudyChangedError, stderr_log, stdout_log
    from .stages import HeldOutLeakError, StudyDataError

    try:
        cfg = FewShotConfig.from_yaml(args.config)
        shard = parse_shard(args.shard)
        study = Study(cfg)
        if args.dry_run:
            plan = dry_run(study, shard)
            if args.json:
                print(json.dumps(plan))
            else:
                print_plan(plan)
            return 0
    except (ConfigError, ValueError, OSError) as e:
        print(f"clamp experiment few-shot: {e}", file=sys.stderr)
        return 2
    log = stderr_log if args.json else stdout_log
    try:
        summary = study.run(shard, log=log, wait_s=args.wait)
    except StudyChangedError as e:
        print(f"clamp experiment few-shot: {e}", file=sys.stderr)
        return 2
    except (HeldOutLeakError, StudyDataError, CheckpointError, ExportError) as e:
        print(f"clamp experiment few-shot: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['status']}; this run: {summary['counts']} in {summary['elapsed_s']} s")
        print(f"results: {summary['results'].get('md')}")
    return 0


def dry_run(study, shard) -> dict:
    """Validate everything that can be checked without training: the configuration, every
    training cell's TrainConfig (model / schedule overrides against the preset), torchrun's
    availability; returns the plan summary with example cell ids."""
    from .plan import summarize_plan
    from .stages import finetune_config, pretrain_config

    cfg = study.cfg
    for c in study.cells:
        if c.stage == "pretrain":
            pretrain_config(cfg, c, ["<data>"])
        elif c.stage == "finetune":
            finetune_config(cfg, c, ["<data>"], "" if c.params["arm"] == "scratch" else "<init>")
    if cfg.pretrain_nproc_per_node > 1:
        import importlib.util

        if importlib.util.find_spec("torch.distributed.run") is None:
            raise ValueError("pretrain_nproc_per_node > 1 needs torch.distributed.run (torchrun)")
    from ..training.config import TrainConfig

    model = TrainConfig(preset=cfg.preset, model=dict(cfg.model)).model_config()
    plan = summarize_plan(cfg, study.cells, shard)
    i, n = shard
    plan["examples"] = {}
    for c in study.cells:
        if c.stage == "aggregate" or c.shard(n) == i:
            plan["examples"].setdefault(c.stage, [])
            if len(plan["examples"][c.stage]) < 3:
                plan["examples"][c.stage].append(c.id)
    done = sum(1 for c in study.cells if study.done(c) is not None)
    from .runner import StudyChangedError

    try:
        study.check_config(record=False)
        plan["config_changed"] = ""
    except StudyChangedError as e:  # a run would refuse; the plan is still worth seeing
        plan["config_changed"] = str(e)
    plan.update(
        study=cfg.name,
        out=cfg.out,
        results_dir=str(cfg.resolved_results_dir()),
        cells_done=done,
        model={
            "preset": cfg.preset,
            "view_size": model.view_size,
            "image_dim": model.image.dim,
            "denoiser_dim": model.denoiser.dim,
        },
        pretrain_tasks=cfg.pretrain_tasks,
        held_out_tasks=cfg.held_out_tasks,
        camera_size=[cfg.width, cfg.height],
        pretrain_nproc_per_node=cfg.pretrain_nproc_per_node,
    )
    return plan


def print_plan(plan: dict) -> None:
    print(f"study {plan['study']} (dry run: configuration valid, nothing trained)")
    print(f"  pretrain on {', '.join(plan['pretrain_tasks'])}")
    print(f"  held out    {', '.join(plan['held_out_tasks'])}")
    print(f"  model       {plan['model']}  cameras {plan['camera_size']}")
    for k, (a, b) in plan["seed_ranges"].items():
        print(f"  seeds of {k:18s} {a} .. {b}")
    print(f"  variants    {', '.join(plan['variants'])}; evaluated at steps {plan['eval_steps']}")
    print(
        f"  {plan['episodes_to_generate']} expert episodes, {plan['pretrain_runs']} pretraining "
        f"runs ({plan['pretrain_steps_total']} steps, {plan['pretrain_nproc_per_node']} "
        f"process(es) each), {plan['finetune_runs']} fine-tuning runs "
        f"({plan['finetune_steps_total']} steps), {plan['eval_episodes_total']} evaluation "
        "episodes"
    )
    print(f"  cells per stage {plan['cells']}; shard {plan['shard']}: {plan['this_shard']}")
    print(
        f"  already done: {plan['cells_done']}; output {plan['out']}, results {plan['results_dir']}"
    )
    for stage, ids in plan["examples"].items():
        print(f"  {stage:9s} e.g. {', '.join(ids)}")
    if plan["config_changed"]:
        print(f"  WARNING: a run would refuse: {plan['config_changed']}")
