"""The ``kdistill`` command: subcommands that call the pipeline; user errors become one line + exit 2."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from .cli_args import parser as _parser
from .errors import KdistillError, RunInterrupted

RUNS = Path("runs")  # where runs go by default (``runs/<preset>-<timestamp>``)


def _source(args: argparse.Namespace) -> Path | str:
    """The config file or preset a command names; the default preset when it names neither."""
    from .config import DEFAULT_PRESET

    return args.config or args.preset or DEFAULT_PRESET


def _cmd_run(args: argparse.Namespace, argv: list[str]) -> int:
    overrides = list(args.overrides)
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.device:
        overrides.append(f"device={args.device}")
    if args.print_config:
        return _print_config(args, overrides)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _torchrun(args.nproc, argv)
    from . import distributed
    from .pipeline import run

    try:
        if args.resume:
            run(resume=args.resume, overrides=overrides, out=args.out, quiet=args.quiet,
                tensorboard=args.tensorboard, trust_code=args.trust_code)
        else:
            run(_source(args), args.out, overrides=overrides, quiet=args.quiet,
                tensorboard=args.tensorboard, retrain_teacher=args.retrain_teacher)
    finally:
        distributed.shutdown()
    return 0


def _print_config(args: argparse.Namespace, overrides: list[str]) -> int:
    """``kdistill run --print-config``: the config a run would use, as YAML; nothing runs."""
    from .config import to_yaml
    from .errors import ConfigError
    from .pipeline import resolve_config

    if args.resume:
        raise ConfigError("--print-config shows the config of a new run",
                          f"a run's own config is {args.resume / 'config.yaml'}")
    cfg, _ = resolve_config(_source(args), overrides)
    print(to_yaml(cfg), end="")
    return 0


def _torchrun(nproc: int, argv: list[str]) -> int:
    """Relaunch this very command under torchrun with ``nproc`` processes on this machine."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "kdistill", *rest]
    return subprocess.run(command).returncode


def _cmd_data(args: argparse.Namespace) -> int:
    from .data import datasets, sources

    if args.data_command == "fetch":
        where = datasets.fetch_registered(args.name, args.data_root, offline=args.offline or None)
        info = sources.provenance(args.name, args.data_root)
        print(f"{args.name}: {where} (source: {info.get('source', 'local')}, "
              f"from {info.get('origin') or info.get('url') or where})")
        return 0
    root = Path(args.data_root) if args.data_root else sources.default_root()
    print(f"data root: {root}")
    for name in datasets.list_datasets():
        d = datasets.describe_registered(name)
        info = sources.provenance(name, root)
        state = (f"{info.get('source')} from {info.get('origin') or info.get('url') or root / name}"
                 if info else "not fetched")
        shape = "x".join(map(str, d["shape"]))
        print(f"\n{name}: {d['description']}\n  images {shape}, {d['classes']} classes; {state}")
        for filename, sha256 in d["files"].items():
            present = "✓" if (root / name / filename).is_file() else "·"
            print(f"  {present} {filename:26s} sha256 {sha256}")
    return 0


def _cmd_runs(directory: Path | None) -> int:
    """``kdistill runs [DIR]``: the default runs/ may not exist yet (no runs made), a DIR given
    must exist (a directory of runs, maybe none yet, or one run)."""
    from .report import list_runs, runs_table
    from .runfiles import not_a_run

    if directory is None:
        if not (RUNS.is_dir() and list_runs(RUNS)):
            print(f"no runs in {RUNS}/ yet: make one with `kdistill run`")
            return 0
        directory = RUNS
    if not directory.exists():
        raise not_a_run(directory, "no such directory")
    if not directory.is_dir():
        raise not_a_run(directory, "not a directory")
    summaries = list_runs(directory)
    print(runs_table(summaries) if summaries else f"no runs in {directory}")
    if any(s["status"] in ("stopped", "interrupted") for s in summaries):
        print("stopped or interrupted runs continue with: kdistill run --resume RUN")
    return 0


def _cmd_study(args: argparse.Namespace, argv: list[str]) -> int:
    """``compare`` and ``sweep``; with ``--nproc N``, the whole study runs under torchrun and
    every run in it trains with N processes (rank 0 writes and prints)."""
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _torchrun(args.nproc, argv)
    from . import distributed, study

    overrides = list(args.overrides)
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.device:
        overrides.append(f"device={args.device}")
    distributed.init_from_env()  # a no-op unless started by torchrun
    try:
        main_rank = distributed.is_main()
        say = None if args.quiet or not main_rank else (
            lambda line: print(line, file=sys.stderr, flush=True))
        config = _source(args)
        command = shlex.join(["kdistill", *argv])
        if args.command == "compare":
            rows = study.compare(args.objectives, config, args.out, seeds=args.seeds,
                                 overrides=overrides, verbose=args.verbose, progress=say,
                                 trust_code=args.trust_code, command=command)
            table = study.compare_markdown(rows)
        else:
            rows = study.sweep(overrides, config, args.out, verbose=args.verbose, progress=say,
                               trust_code=args.trust_code, command=command)
            table = study.sweep_markdown(rows)
        if main_rank:
            print(table, end="")
    finally:
        distributed.shutdown()
    return 0


def _cmd_reproduce(args: argparse.Namespace, argv: list[str]) -> int:
    from .reproduce import FULL, QUICK, reproduce, with_overrides

    recipe = with_overrides(QUICK if args.quick else FULL, args.overrides)
    say = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    results = reproduce(args.experiment, args.out, quick=args.quick, seeds=args.seeds,
                        recipe=recipe, device=args.device, data_root=args.data_root, progress=say,
                        show_bars=False if args.quiet else None,
                        command=shlex.join(["kdistill", *argv]),
                        retrain_teacher=args.retrain_teacher)
    print((Path(results["out_dir"]) / "table.md").read_text(), end="")
    return 0


def _listing(items: dict[str, str]) -> int:
    width = max(map(len, items), default=0)
    for name, text in items.items():
        print(f"{name:{width}s}  {text}")
    return 0


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``, letting ``key=value`` overrides come after options as well as before
    (argparse alone takes a positional list only where it starts)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    overrides = getattr(args, "overrides", None)
    if extra and (overrides is None or any(a.startswith("-") or "=" not in a for a in extra)):
        parser.parse_args(argv)  # exits, naming the arguments it does not know
    if extra:
        overrides.extend(extra)
    return args


def _cmd_bench(args: argparse.Namespace) -> int:
    from .report import deployment_table, speed_ratios
    from .rundir import bench_run

    metrics = bench_run(args.run_dir, onnx=not args.no_onnx, trust_code=args.trust_code)
    if args.json:
        print(json.dumps(metrics["deployment"], indent=2))
        return 0
    print("\n".join(deployment_table(metrics)[2:]).rstrip())
    print(f"The student is {speed_ratios(metrics)} (eager PyTorch).")
    print(f"Saved in {args.run_dir / 'metrics.json'} and {args.run_dir / 'report.md'}.")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .rundir import export_run

    for role, info in export_run(args.run_dir, trust_code=args.trust_code).items():
        print(f"{role}: {info['path']}  max |Δlogit| {info['max_abs_logit_diff']:.2e}, "
              f"identical test predictions: {info['identical_predictions']}")
    return 0


def _dispatch(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the parsed command; user errors propagate to :func:`main`."""
    if args.command == "run":
        return _cmd_run(args, argv)
    if args.command == "data":
        return _cmd_data(args)
    if args.command == "report":
        from .report import write_report

        print(write_report(args.run_dir))  # reads metrics.json through the run schema
        return 0
    if args.command in ("compare", "sweep"):
        return _cmd_study(args, argv)
    if args.command == "reproduce":
        return _cmd_reproduce(args, argv)
    if args.command == "runs":
        return _cmd_runs(args.directory)
    if args.command == "bench":
        return _cmd_bench(args)
    if args.command == "export":
        return _cmd_export(args)
    if args.command in ("presets", "models", "losses"):
        from . import list_losses, list_models, list_presets

        return _listing({"presets": list_presets, "models": lambda: list_models(params=True),
                         "losses": list_losses}[args.command]())
    _parser().print_help()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parse(argv)
    try:
        return _dispatch(args, argv)
    except RunInterrupted as exc:
        print(f"kdistill: {exc}", file=sys.stderr)
        return 130
    except KdistillError as exc:
        if args.debug:
            raise
        print(f"kdistill: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdistill: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # disk full, permission denied... on a path the user chose
        if args.debug:
            raise
        print(f"kdistill: error: {exc.strerror or exc}"
              f"{f': {exc.filename}' if exc.filename else ''} (free space or choose another path)",
              file=sys.stderr)
        return 2
