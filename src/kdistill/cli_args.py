"""The ``kdistill`` command line: its parser, every subcommand's options and --help texts.

The handlers that run a parsed command live in :mod:`kdistill.cli`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

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
  distill.*  the objective: loss (`kdistill losses`), temperature, alpha, beta, warm-up,
             teacher_table_gb (precomputed teacher logits or a live teacher)
  bench.*    the deployment benchmark after training: on/off, ONNX and int8, repeats, batch sizes
  top level  description, seed, threads, device, precision, compile, cuda_graphs,
             channels_last, control, control_pass, eval_batch_size, checkpoint_every

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



def parser() -> argparse.ArgumentParser:
    """The ``kdistill`` parser: every subcommand with its options, help and examples."""
    p = argparse.ArgumentParser(prog="kdistill", description="Knowledge distillation, measured.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _add_run(sub)
    _add_data(sub)
    _add_run_dir_commands(sub)
    _add(sub, "presets", "list presets")
    _add(sub, "models", "list model names")
    _add(sub, "losses", "list distillation objectives")
    for name, help_text in (("compare", "compare objectives over several seeds, each against its control"),
                            ("sweep", "train every combination of swept settings; table and plot")):
        _add_study(sub, name, help_text)
    _add_reproduce(sub)
    return p


def _hidden_debug(p: argparse.ArgumentParser) -> None:
    """``--debug`` after the subcommand as well as before it."""
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _add_run(sub) -> None:
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
    _hidden_debug(r)


def _add_data(sub) -> None:
    d = _add(sub, "data", "fetch datasets and show where they came from")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    f = _add(dsub, "fetch", "download (or take offline) and verify a dataset")
    f.add_argument("name", help="mnist, fashion-mnist, cifar10 or cifar100")
    f.add_argument("--data-root", help="where datasets live (default $KDISTILL_DATA or user cache)")
    f.add_argument("--offline", action="store_true", help="skip the download mirrors")
    i = _add(dsub, "info", "show each dataset's shape, classes, location, source and hashes")
    i.add_argument("--data-root")


def _add_run_dir_commands(sub) -> None:
    """``report``, ``bench``, ``export`` (on one run) and ``runs`` (on a directory of them)."""
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


def _add_study(sub, name: str, help_text: str) -> None:
    """``compare`` or ``sweep``: the same options, then objectives or swept keys."""
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
    _hidden_debug(st)


def _add_reproduce(sub) -> None:
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
    rp.add_argument("--retrain-teacher", action="store_true",
                    help="train each seed's teacher even if the teacher cache holds one of "
                         "this recipe")
    rp.add_argument("overrides", nargs="*", metavar="key=value",
                    help="change the recipe, e.g. student.epochs=300 batch_size=32 (also "
                         "student_epochs=300; see kdistill.reproduce.Recipe)")
    _hidden_debug(rp)
