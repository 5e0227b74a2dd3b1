"""The ``kdistill`` command: subcommands that call the pipeline; user errors become one line + exit 2."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from .errors import KdistillError, RunInterrupted

RUNS = Path("runs")  # where runs go by default (``runs/<preset>-<timestamp>``)

EXAMPLES = """examples:
  kdistill run                                   # the MNIST tutorial's experiment (preset mnist-spec)
  kdistill run --out runs/demo student.epochs=3  # override any config key
  kdistill run --config my.yaml distill.loss=hinton distill.temperature=4 distill.alpha=0.9
  kdistill run --nproc 2                         # DistributedDataParallel (torchrun), 2 processes
  kdistill run --preset mnist-best --print-config # every config key, resolved; nothing runs
  kdistill report runs/demo                      # re-render report.md, report.html, plots
  kdistill bench runs/demo                       # re-measure latency and throughput
  kdistill export runs/demo                      # ONNX files, parity-checked
  kdistill runs                                  # list runs with status and accuracies
  kdistill compare --objectives "distill.loss=kl" "distill.loss=dkd"  # 3 seeds each, with controls
  kdistill sweep distill.temperature=1,4,16      # one run per value; table and plot
  kdistill reproduce hinton-mnist --quick        # a paper's experiments against its numbers
  kdistill data fetch mnist
  kdistill presets | kdistill models | kdistill losses
"""
# ``kdistill run --help``: the config's sections, one line each (tests check it names them all).
CONFIG_HELP = """config keys (key=value; `kdistill run --print-config` prints every key with its value):
  data.*     the dataset (a registered name or a path), mean/std, image_size, augmentation, val_size
  teacher.*  the teacher: model, kwargs, epochs, optimizer and schedule, weights to load, ensemble
  student.*  the student: model, kwargs, epochs, optimizer and schedule (its control: the same)
  distill.*  the objective: loss (`kdistill losses`), temperature, alpha, beta, warm-up
  bench.*    the deployment benchmark after training: on/off, ONNX and int8, repeats, batch sizes
  top level  description, seed, threads, device, precision, compile, cuda_graphs, control,
             eval_batch_size, checkpoint_every

"""
# Examples shown by each subcommand's --help.
HELP_EXAMPLES = {
    "data": "kdistill data fetch mnist\n  kdistill data fetch fashion-mnist --offline\n"
            "  kdistill data info --data-root /data/kd",
    "fetch": "kdistill data fetch mnist\n  kdistill data fetch mnist --data-root /data/kd --offline",
    "info": "kdistill data info\n  kdistill data info --data-root /data/kd",
    "report": "kdistill report runs/mnist-spec-20250101-120000   # rewrites report.md, report.html, plots/",
    "bench": "kdistill bench runs/mnist-spec-20250101-120000            # eager, ONNX Runtime, int8\n"
             "  kdistill bench runs/mnist-spec-20250101-120000 --no-onnx  # eager PyTorch only\n"
             "  kdistill bench runs/mnist-spec-20250101-120000 --json     # the measurements as JSON",
    "export": "kdistill export runs/mnist-spec-20250101-120000   # writes <role>.onnx, checks parity",
    "runs": "kdistill runs              # the runs under runs/\n  kdistill runs /tmp/sweep",
    "presets": "kdistill presets\n  kdistill run --preset mnist-best",
    "models": "kdistill models\n  kdistill run teacher.model=mlp:784-800-800-10\n"
              "  kdistill run student.model=mypkg.nets:make_student student.kwargs.width=64",
    "losses": "kdistill losses\n  kdistill run distill.loss=hinton distill.temperature=4 distill.alpha=0.9",
    "compare": 'kdistill compare --seeds 3 --out runs/cmp --objectives "distill.loss=kl" '
               '"distill.loss=hinton distill.temperature=4 distill.alpha=0.9"\n'
               '  kdistill compare student.epochs=3 --objectives "distill.loss=kl" "distill.loss=dkd"'
               '   # overrides go before --objectives',
    "reproduce": "kdistill reproduce hinton-mnist --quick   # every experiment, short schedules\n"
                 "  kdistill reproduce hinton-mnist --seeds 3 --device cuda --out runs/hinton\n"
                 "  kdistill reproduce hinton-mnist --out runs/hinton   # again: continues where it stopped\n"
                 "  kdistill reproduce hinton-mnist --device cuda student.epochs=300 batch_size=32",
    "sweep": "kdistill sweep distill.temperature=1,2,4,8,16,20 distill.alpha=0.5,0.9\n"
             "  kdistill sweep --out runs/temps distill.temperature=1,4,16 student.epochs=3\n"
             "  kdistill sweep --device cuda --nproc 2 distill.alpha=0.5,0.9",
}


def _add(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    """A subcommand parser whose --help ends with examples."""
    return sub.add_parser(name, help=help_text, epilog=f"examples:\n  {HELP_EXAMPLES[name]}\n",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kdistill", description="Knowledge distillation, measured.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="train teacher, distilled student and control; measure; report",
                       epilog=CONFIG_HELP + EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    src = r.add_mutually_exclusive_group()
    src.add_argument("--preset", help="named recipe (see `kdistill presets`); default mnist-spec")
    src.add_argument("--config", type=Path, help="YAML config file")
    src.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="continue a stopped run from its last checkpoints, with its own config")
    r.add_argument("--out", type=Path, help="run directory (default runs/<preset>-<timestamp>)")
    r.add_argument("--data-root", help="where datasets live (same as data.root)")
    r.add_argument("--quiet", action="store_true", help="print nothing but errors")
    r.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files to RUN_DIR/tensorboard")
    r.add_argument("--retrain-teacher", action="store_true",
                   help="train the teacher even if the teacher cache holds one of this recipe")
    r.add_argument("--device", help="auto (default: CUDA, then MPS, then CPU), cpu, cuda, cuda:N, "
                                    "mps (same as device=)")
    r.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train with N processes (DistributedDataParallel via torchrun)")
    r.add_argument("--trust-code", action="store_true",
                   help="allow a resumed run's config to name code (package.module:factory) to import and run")
    r.add_argument("--print-config", action="store_true",
                   help="print the resolved config (every key, overrides applied) as YAML and exit")
    r.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. seed=1")
    r.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    d = _add(sub, "data", "fetch datasets and show where they came from")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    f = _add(dsub, "fetch", "download (or take offline) and verify a dataset")
    f.add_argument("name", help="mnist, fashion-mnist, cifar10 or cifar100")
    f.add_argument("--data-root", help="where datasets live (default $KDISTILL_DATA or user cache)")
    f.add_argument("--offline", action="store_true", help="skip the download mirrors")
    i = _add(dsub, "info", "show each dataset's shape, classes, location, source and hashes")
    i.add_argument("--data-root")

    rep = _add(sub, "report", "re-render report.md, report.html and plots from metrics.json")
    rep.add_argument("run_dir", type=Path)
    b = _add(sub, "bench", "measure a run's teacher and student: latency, throughput, ONNX, int8")
    b.add_argument("run_dir", type=Path)
    b.add_argument("--no-onnx", action="store_true", help="time eager PyTorch only")
    b.add_argument("--json", action="store_true", help="print the measurements as JSON")
    b.add_argument("--trust-code", action="store_true", help="allow the run's config to name code (package.module:factory) to import and run")
    e = _add(sub, "export", "export a run's models to ONNX with a parity check")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--onnx", action="store_true", help="export format: ONNX (the default and only one)")
    e.add_argument("--trust-code", action="store_true", help="allow the run's config to name code (package.module:factory) to import and run")
    runs = _add(sub, "runs", "list runs with their status and key numbers")
    runs.add_argument("directory", type=Path, nargs="?",
                      help="a directory of runs, or one run (default runs/)")
    _add(sub, "presets", "list presets")
    _add(sub, "models", "list model names")
    _add(sub, "losses", "list distillation objectives")
    for name, help_text in (("compare", "compare objectives over several seeds, each against its control"),
                            ("sweep", "train every combination of swept settings; table and plot")):
        st = _add(sub, name, help_text)
        st_src = st.add_mutually_exclusive_group()
        st_src.add_argument("--preset", help="named recipe (see `kdistill presets`); default mnist-spec")
        st_src.add_argument("--config", type=Path, help="YAML config file")
        st.add_argument("--out", type=Path, help=f"study directory (default runs/{name}-<timestamp>)")
        st.add_argument("--data-root", help="where datasets live (same as data.root)")
        st.add_argument("--verbose", action="store_true", help="show each run's own progress")
        st.add_argument("--quiet", action="store_true", help="print only the final table")
        st.add_argument("--device", help="auto (default: CUDA, then MPS, then CPU), cpu, cuda, "
                                         "cuda:N, mps (same as device=) for every run")
        st.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="train every run with N processes (DistributedDataParallel via torchrun)")
        st.add_argument("--trust-code", action="store_true",
                        help="allow earlier runs reused from --out to name code to import and run")
        if name == "compare":
            st.add_argument("--seeds", type=int, default=3, metavar="N",
                            help="seeds per objective: the config's seed + 0..N-1 (default 3)")
            st.add_argument("--objectives", nargs="+", required=True, metavar="SETTINGS",
                            help='one quoted string of key=value settings per objective')
            st.add_argument("overrides", nargs="*", metavar="key=value",
                            help="config overrides for every run (put them before --objectives)")
        else:
            st.add_argument("overrides", nargs="+", metavar="KEY=V1,V2,...|key=value",
                            help="swept keys (comma-separated values) and plain overrides")
        st.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    rp = _add(sub, "reproduce", "reproduce a paper's experiments: paper against ours in one table")
    rp.add_argument("experiment", help="hinton-mnist (Hinton et al. 2015, section 3)")
    rp.add_argument("--quick", action="store_true",
                    help="every experiment, on 10,000 training images with short schedules "
                         "(minutes on 2 CPU cores)")
    rp.add_argument("--seeds", type=int, default=1, metavar="N",
                    help="train everything with seeds 0..N-1; ours is mean ± std (default 1)")
    rp.add_argument("--out", type=Path, help="output directory (default runs/<experiment>-<timestamp>); "
                                             "an unfinished one is continued")
    rp.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    rp.add_argument("--data-root", help="where datasets live (default $KDISTILL_DATA or user cache)")
    rp.add_argument("--quiet", action="store_true", help="print only the final table")
    rp.add_argument("overrides", nargs="*", metavar="key=value",
                    help="change the recipe, e.g. student.epochs=300 batch_size=32 (also "
                         "student_epochs=300; see kdistill.reproduce.Recipe)")
    rp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


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
        if args.command == "compare":
            rows = study.compare(args.objectives, config, args.out, seeds=args.seeds,
                                 overrides=overrides, verbose=args.verbose, progress=say,
                                 trust_code=args.trust_code)
            table = study.compare_markdown(rows)
        else:
            rows = study.sweep(overrides, config, args.out, verbose=args.verbose, progress=say,
                               trust_code=args.trust_code)
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
                        command=" ".join(["kdistill", *argv]))
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parse(argv)
    try:
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
        if args.command == "export":
            from .rundir import export_run

            for role, info in export_run(args.run_dir, trust_code=args.trust_code).items():
                print(f"{role}: {info['path']}  max |Δlogit| {info['max_abs_logit_diff']:.2e}, "
                      f"identical test predictions: {info['identical_predictions']}")
            return 0
        if args.command in ("presets", "models", "losses"):
            from . import list_losses, list_models, list_presets

            return _listing({"presets": list_presets, "models": lambda: list_models(params=True),
                             "losses": list_losses}[args.command]())
        _parser().print_help()
        return 0
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
