"""`clamp pretrain`, `finetune`, `export`, `export-init` and `bench policy`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml


def add_commands(sub, bench_sub) -> None:
    for name, helptext in (
        ("pretrain", "CLAMP contrastive pretraining + Diffusion Policy on multi-task episodes"),
        ("finetune", "fine-tune a pretrained run on a few demos of a new task"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--config", help="YAML of TrainConfig fields (flags below override it)")
        p.add_argument("--preset", help="model preset: cpu-small or paper")
        p.add_argument("--data", nargs="+", help="episode folders / files")
        p.add_argument("--out", help="run folder")
        p.add_argument("--steps", type=int)
        p.add_argument("--batch-size", type=int)
        p.add_argument("--lr", type=float)
        p.add_argument("--seed", type=int)
        p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
        p.add_argument("--workers", type=int, dest="num_workers", help="DataLoader workers")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="any TrainConfig field, dotted into model/schedule, e.g. "
            "model.view_size=64 (value parsed as YAML)",
        )
        p.add_argument("--no-resume", action="store_true", help="ignore checkpoints/last.pt")
        p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
        if name == "finetune":
            p.add_argument(
                "--init",
                dest="init_from",
                help="pretraining run folder or .pt (default: the shipped CLAMP pretraining, "
                f"{DEFAULT_INIT})",
            )
            p.add_argument(
                "--episodes",
                type=int,
                dest="max_episodes",
                help="use only the first N demos per task",
            )
            p.add_argument(
                "--unfreeze",
                action="store_true",
                help="train the CLAMP encoders too (default: frozen)",
            )
            p.add_argument(
                "--scratch",
                action="store_true",
                help="baseline: random init, everything trained by the policy loss",
            )
        p.set_defaults(func=cmd_train, mode=name)

    ex = sub.add_parser("export", help="checkpoint -> ONNX model directory (+ parity check)")
    ex.add_argument("run", help="training run folder or checkpoint .pt")
    ex.add_argument("--out", required=True, help="model directory, e.g. models/NAME")
    ex.add_argument("--name", default="", help="model name (default: the folder name)")
    ex.add_argument(
        "--tolerance", type=float, default=1e-4, help="max |torch - ORT| over a full DDIM loop"
    )
    ex.add_argument("--json", action="store_true")
    ex.set_defaults(func=cmd_export)

    ei = sub.add_parser(
        "export-init",
        help="checkpoint -> a fine-tuning init file (weights, normalisation, configuration; no "
        "optimizer state) to share or ship for `clamp finetune --init`",
    )
    ei.add_argument("run", help="training run folder or checkpoint .pt")
    ei.add_argument("--out", required=True, help="file to write, e.g. models/pretrained/NAME.pt")
    ei.add_argument("--json", action="store_true")
    ei.set_defaults(func=cmd_export_init)

    bp = bench_sub.add_parser(
        "policy", help="full inference (encoders + DDIM), ONNX Runtime vs torch eager"
    )
    bp.add_argument(
        "--presets",
        default="cpu-small,paper",
        help="comma-separated presets; PRESET+rgb / PRESET+no-rgb turn its RGB branch on / off",
    )
    bp.add_argument("--repeats", type=int, default=20, help="timed inferences per side")
    bp.add_argument("--threads", type=int, default=0, help="threads per side (0 = all cores)")
    bp.add_argument("--device", default="cpu", help="cpu or cuda (ORT CUDA EP + torch cuda)")
    bp.add_argument(
        "--model",
        default=None,
        help="instead of the presets: the cost of chunk selection on this model directory, "
        "seam-guided inference with each of --candidates (ONNX Runtime only)",
    )
    bp.add_argument(
        "--candidates", default="1,2,4,8", help="with --model: comma-separated K to time"
    )
    bp.add_argument("--json", action="store_true")
    bp.set_defaults(func=cmd_bench_policy)


DEFAULT_INIT = "models/pretrained/clamp_sim5_cpu_small.pt"
"""What `clamp finetune` starts from without --init or --scratch: CLAMP pretrained on five
simulated tasks (models/pretrained/README.md); the few-shot study measured what it is worth
(docs/experiments.md)."""


def default_init() -> Path | None:
    """The shipped pretraining, where the package's data is (``shipped_path``)."""
    from ..shipped import shipped_path

    return shipped_path(DEFAULT_INIT)


def _set(d: dict, key: str, value) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def train_config_from_args(args):
    from .config import TrainConfig

    d: dict = {}
    if args.config:
        with open(args.config) as f:
            d = yaml.safe_load(f) or {}
    for key in (
        "preset",
        "data",
        "out",
        "steps",
        "lr",
        "seed",
        "device",
        "num_workers",
        "init_from",
        "max_episodes",
    ):
        v = getattr(args, key, None)
        if v is not None:
            d[key] = v
    if args.batch_size is not None:
        d["batch_size"] = args.batch_size
    if getattr(args, "unfreeze", False):
        d["freeze_encoders"] = False
    if getattr(args, "scratch", False):
        d["from_scratch"] = True
    for item in args.set:
        if "=" not in item:
            raise SystemExit(f"--set {item}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        _set(d, k.strip(), yaml.safe_load(v))
    if args.mode == "finetune":
        d.setdefault("contrastive", False)
        if not d.get("init_from") and not d.get("from_scratch"):
            init = default_init()
            if init is None:
                raise SystemExit(
                    f"clamp finetune: give --init RUN (or --scratch for the baseline); the "
                    f"shipped {DEFAULT_INIT} is not installed here"
                )
            d["init_from"] = str(init)
            print(
                f"clamp finetune: starting from the shipped CLAMP pretraining {init} "
                "(--init RUN for another, --scratch for none)",
                file=sys.stderr,
            )
    if not d.get("data"):
        raise SystemExit(f"clamp {args.mode}: give --data DIR (or data: in --config)")
    d.setdefault("out", f"runs/{args.mode}")
    return TrainConfig.from_dict(d)


def _last_rows(metrics: Path) -> dict:
    out: dict = {}
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            row = json.loads(line)
            key = "val" if any(k.startswith("val/") for k in row) else "train"
            out[key] = row
    return out


def cmd_train(args) -> int:
    from ..perception.config import ConfigError
    from .train import CheckpointError, train

    try:
        cfg = train_config_from_args(args)
        ckpt = train(cfg, progress=not args.json, resume=not args.no_resume)
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"clamp {args.mode}: {e}", file=sys.stderr)
        return 2
    rows = _last_rows(Path(cfg.out) / "metrics.jsonl")
    summary = {"checkpoint": str(ckpt), "out": cfg.out, **rows}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"checkpoint: {ckpt}")
        for k, row in rows.items():
            print(
                f"  {k}: "
                + ", ".join(f"{n}={v:.4g}" for n, v in row.items() if isinstance(v, float))
            )
    return 0


def cmd_export(args) -> int:
    from ..policy.metadata import MetadataError
    from .export import ExportError, export
    from .train import CheckpointError

    try:
        meta = export(args.run, args.out, name=args.name, tolerance=args.tolerance)
    except (ExportError, CheckpointError, MetadataError) as e:
        print(f"clamp export: {e}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in Path(args.out).iterdir())
    result = {
        "out": args.out,
        "name": meta.name,
        "parity_max_abs_diff": meta.parity_max_abs_diff,
        "size_mb": size / 1e6,
        "files": sorted(p.name for p in Path(args.out).iterdir()),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"exported {meta.name} to {args.out} ({result['size_mb']:.1f} MB); "
            f"ORT vs torch over a full DDIM loop: max |diff| = {meta.parity_max_abs_diff:.2e}"
        )
    return 0


def cmd_export_init(args) -> int:
    from .train import CheckpointError, export_init

    try:
        r = export_init(args.run, args.out)
    except CheckpointError as e:
        print(f"clamp export-init: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(r))
    else:
        print(
            f"wrote {r['out']} ({r['size_mb']:.1f} MB): step {r['step']}, tasks "
            f"{', '.join(r['tasks']) or '-'}, weights sha1 {r['weights_sha1'][:12]}"
        )
    return 0


def cmd_bench_policy(args) -> int:
    from ..eval.bench_policy import bench_candidates, bench_policy

    if args.model is not None:
        ks = [int(k) for k in args.candidates.split(",") if k.strip()]
        if not ks or min(ks) < 1:
            print("clamp bench policy: --candidates needs integers >= 1", file=sys.stderr)
            return 2
        r = bench_candidates(args.model, ks, args.repeats, args.threads, not args.json)
        if args.json:
            print(json.dumps(r))
            return 0
        print(r["metric"])
        for k, row in r["candidates"].items():
            print(
                f"  K={k}: {row['median_ms']:.1f} ms (p90 {row['p90_ms']:.1f}), "
                f"{row['ratio_to_k1']:.2f}x K=1"
            )
        return 0

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    results = bench_policy(
        presets,
        repeats=args.repeats,
        threads=args.threads,
        device=args.device,
        progress=not args.json,
    )
    if args.json:
        print(json.dumps(results))
        return 0
    for r in results:
        c = r["config"]
        print(f"{c['preset']}: {r['metric']}")
        print(
            f"  ours (ONNX Runtime, {c['ort_provider']}) {r['ours']:.1f} ms   "
            f"baseline ({r['baseline_name']}) {r['baseline']:.1f} ms   "
            f"ratio {r['ratio']:.2f}x   parity {c['parity_max_abs_diff']:.1e}"
        )
    return 0


__all__ = ["add_commands", "argparse"]
