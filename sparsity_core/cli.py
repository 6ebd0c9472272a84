"""``svite`` / ``python -m sparsity_core``: train, eval, inspect, check, compact, runs, convert (docs/cli.md).

Error convention: bad input -> one line on stderr naming the file or flag and the problem, exit
code 2, no traceback (set ``SVITE_DEBUG=1`` to see one), no file changed. A typed flag that has no
effect is named on stderr too, one line each (``training/flags.py`` says when that warns and when it refuses).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .errors import FlagError, SviteError, one_line

if TYPE_CHECKING:  # config imports torch; the CLI imports it lazily, so --help and errors stay fast
    from .training.config import TrainConfig

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the convention), not usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .training.config import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train a dense or sparse ViT", description="Train a ViT/DeiT densely or with "
                       "SViTE / S2ViTE / SViTE+ sparsity. Writes OUT/checkpoint.safetensors, metrics.jsonl, config.json.")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=d.model, help="timm ViT/DeiT name, or the CPU preset vit_tiny_demo")
    for flag in ("img-size", "patch-size", "embed-dim", "depth", "num-heads"):
        g.add_argument(f"--{flag}", type=int, default=None, help="override of the model's default")
    g.add_argument("--data", default=d.data, help="'demo' (built-in procedural data) or an ImageFolder directory")
    g.add_argument("--train-size", type=int, default=None,
                   help="demo data: training images generated; a folder: at most this many (a seeded subset)")
    g.add_argument("--val-size", type=int, default=None,
                   help="demo data: validation images generated; a folder: at most this many")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (the paper: 5e-4 * global_batch / 512)")
    g.add_argument("--min-lr", type=float, default=d.min_lr)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="the paper uses 5")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g.add_argument("--aa", default=None, help="timm auto-augment policy for folder data (DeiT: rand-m9-mstd0.5-inc1)")
    g.add_argument("--mixup", type=float, default=d.mixup, help="mixup alpha (DeiT: 0.8)")
    g.add_argument("--cutmix", type=float, default=d.cutmix, help="cutmix alpha (DeiT: 1.0)")
    g.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm to this value")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    g.add_argument("--amp", default=d.amp, choices=["auto", "bf16", "off"], help="auto: bf16 autocast on CUDA")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--num-workers", type=int, default=d.num_workers)
    g.add_argument("--max-steps", type=int, default=None, help="stop after N steps (smoke runs)")
    g.add_argument("--log-every", type=int, default=d.log_every, help="steps between metrics lines")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="steps between periodic checkpoints (0: epoch ends only)")
    g.add_argument("--log-to", default=None, metavar="TRACKERS",
                   help="also write the run's scalars into tensorboard, wandb (offline), or both comma-separated "
                        "(optional extras; tags in docs/api.md)")
    g.add_argument("--out", required=True, help="run directory")
    g.add_argument("--resume", default=None, help="run directory or checkpoint to continue")
    g.add_argument("--init", default=None, help="checkpoint to start from (weights, and masks if it has any; its "
                   "classifier rows matched to the data's classes by name)")
    _add_sparsity_flags(p, d)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _add_sparsity_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """``svite train``'s sparsity and token-selector (SViTE+) flags."""
    g = p.add_argument_group("sparsity")
    g.add_argument("--method", default=d.method, choices=["dense", "static", "oneshot", "svite", "s2vite"])
    g.add_argument("--density", type=float, default=d.density, help="fraction of sparsified weights kept")
    g.add_argument("--sparse-init", default=d.sparse_init, choices=["fixed_ERK", "ER", "uniform", "custom"])
    g.add_argument("--mask-path", default=None, help="per-layer densities (JSON) for --sparse-init custom")
    g.add_argument("--update-frequency", type=int, default=d.update_frequency, help="steps between topology updates")
    g.add_argument("--death-rate", type=float, default=d.death_rate, help="initial prune rate")
    g.add_argument("--decay-schedule", default=d.decay_schedule, choices=["cosine", "constant"])
    g.add_argument("--t-end", type=float, default=d.t_end, help="fraction of training after which topology is fixed")
    g.add_argument("--growth", default=d.growth, choices=["gradient", "momentum", "random"],
                   help="gradient: |grad| of the last minibatch (RigL, the reference); momentum: |AdamW first "
                        "moment| (SViTE only); random: SET")
    g.add_argument("--death", default=d.death, choices=["magnitude", "magnitude-mature"],
                   help="prune by |w| (the reference), or by |w| with weights grown at the previous update "
                        "pruned last (magnitude-mature)")
    # "zero" (both moments, our former default) measured worse: not offered; TrainConfig has it for the ablation
    g.add_argument("--grown-moments", default=d.grown_moments, choices=["keep", "zero-avg"],
                   help="AdamW moments of grown weights: keep (default, the reference), zero-avg (first moment "
                        "zeroed)")
    g.add_argument("--optimizer-state", default=d.optimizer_state, choices=["full", "active"],
                   help="AdamW moments of masked weights: every entry (full) or active ones only (active)")
    g.add_argument("--update-start", default=d.update_start, metavar="WHEN",
                   help="no topology update before this: 'warmup' (the end of the LR warm-up), 'plateau' (after "
                        "the warm-up, once the training loss has fallen to 0.9 of its starting value), a number of "
                        "steps (400) or of epochs (2.5ep); default %(default)s")
    g.add_argument("--include", action="append", default=[], help="glob of parameter names to sparsify (repeat)")
    g.add_argument("--exclude", action="append", default=[], help="glob of parameter names to keep dense (repeat)")
    g.add_argument("--oneshot-at", type=float, default=d.oneshot_at,
                   help="oneshot baseline: fraction of training done dense before pruning")
    g.add_argument("--atten-density", type=float, default=d.atten_density, help="S2ViTE: fraction of heads kept")
    g.add_argument("--other-density", type=float, default=d.other_density, help="S2ViTE: fraction of MLP neurons kept")
    g.add_argument("--head-growth", default=d.head_growth, choices=["alignment", "gradient-norm"],
                   help="S2ViTE: how inactive heads are scored and grown: alignment (default: shadow q/k/v rows, "
                        "score = proj-column gradient per unit of head output) or gradient-norm (the former rule: "
                        "||dL/da_h||, fresh q/k; heads never moved under it)")
    g = p.add_argument_group("token selector (SViTE+)")
    g.add_argument("--token-number", type=int, default=None, help="keep K patch tokens (the class token is always kept)")
    g.add_argument("--keep-ratio", type=float, default=None, help="keep this fraction of patch tokens")
    g.add_argument("--selector-block", type=int, default=d.selector_block, help="the selector runs before this block")
    g.add_argument("--selector-scorer", default=d.selector_scorer, choices=["linear", "mlp"])
    g.add_argument("--selector-keep-warmup", type=float, default=d.selector_keep_warmup, metavar="F",
                   help="keep every patch at first, then fewer, down to k at F of training (default %(default)s; "
                        "0: k from the start, as the reference)")
    g.add_argument("--selector-mode", default=d.selector_mode, choices=["soft", "gather", "zero"],
                   help="soft (default): train on every token with dropped ones masked out of attention, so each "
                        "patch gets its own gradient; gather: drop tokens in training too (faster); zero: the "
                        "reference's zeroing. Inference gathers the top-k in soft and gather modes")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig that parsed ``svite train`` arguments stand for."""
    from .training.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def _warn(command: str) -> Callable[[str], None]:
    """A printer of one warning line for ``svite COMMAND`` (training/flags.py decides what deserves one)."""

    def warn(line: str) -> None:
        if os.environ.get("RANK", "0") == "0":  # under torchrun: once, not once per rank
            print(f"svite {command}: warning: {line}", file=sys.stderr)
    return warn


def cmd_train(args: argparse.Namespace) -> int:
    from .training.config import validate_config
    from .training.flags import check_unused_flags, typed_flags
    from .training.loop import train

    if threading.current_thread() is threading.main_thread():
        # SIGTERM (the app's "cancel", a scheduler's preemption) ends the run like Ctrl-C: the lock is
        # released and the last checkpoint stays as it was.
        signal.signal(signal.SIGTERM, _interrupt)
    cfg = train_config(args)
    validate_config(cfg)  # a value out of range is an error whatever the method: said before any unused flag
    typed = typed_flags(build_parser(), "train", args.argv) if getattr(args, "argv", None) is not None else []
    check_unused_flags(cfg, typed, _warn("train"))
    path = train(cfg, show_progress=not args.quiet, echo_metrics=not args.quiet)
    print(f"checkpoint: {path}", file=sys.stderr)
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint", description="Accuracy, size, FLOPs and speed. A "
                       "folder's classes are matched to the checkpoint's by name (docs/cli.md): classes it does not "
                       "know are left out and named; a folder with none of them is refused.")
    p.add_argument("path")
    p.add_argument("--data", default=None, help="'demo' or an ImageFolder directory (default: what it was trained on)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--val-size", type=int, default=None,
                   help="demo data: validation images generated; a folder: at most this many")
    p.add_argument("--throughput-batch", type=int, default=32, help="batch size for the measured throughput")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from .analysis.report import evaluate_checkpoint
    from .checkpoint import load_checkpoint

    loaded = load_checkpoint(args.path)
    result = evaluate_checkpoint(loaded, data=args.data, batch_size=args.batch_size, val_size=args.val_size,
                                 throughput_batch=args.throughput_batch)
    _emit(result, args.json)
    return 0


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="describe any checkpoint the loader accepts")
    p.add_argument("path")
    p.add_argument("--num-heads", type=int, default=None, help="head count for plain state dicts (not in the weights)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .analysis.report import inspect_checkpoint
    from .checkpoint import load_checkpoint

    loaded = load_checkpoint(args.path, num_heads=args.num_heads)
    _num_heads_unused(args, loaded)
    _emit(inspect_checkpoint(loaded), args.json)
    return 0


def _num_heads_unused(args: argparse.Namespace, loaded: Any) -> None:
    """``--num-heads`` tells a plain state dict (or an official checkpoint) its head count; our own files
    record their architecture, so there it does nothing, and says so."""
    if args.num_heads is not None and loaded.format == "svite-explorer":
        _warn(args.command)(f"--num-heads has no effect on {args.path}: the checkpoint records its architecture")


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="validate a checkpoint: exit 0 if every loader check passes, else 2",
                       description="Load a checkpoint with every check the loader makes (sizes, masks, history, "
                       "metadata) and print one line. The app runs this on uploads, in a separate process.")
    p.add_argument("path")
    p.add_argument("--num-heads", type=int, default=None, help="head count for plain state dicts (not in the weights)")
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint

    loaded = load_checkpoint(args.path, num_heads=args.num_heads)
    _num_heads_unused(args, loaded)
    loaded.history.verify()  # loading decodes no history; a check decodes all of it once
    print(f"ok: {args.path}: {loaded.format}, {loaded.model_config.name}, {loaded.method}, "
          f"{len(loaded.history)} snapshots")
    return 0


def _add_compact(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compact", help="structured checkpoint -> physically smaller model (S2ViTE)")
    p.add_argument("path")
    p.add_argument("out")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compact)


def cmd_compact(args: argparse.Namespace) -> int:
    from .analysis.report import compact_file

    _emit(compact_file(args.path, args.out), args.json)
    return 0


def _add_runs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="a folder of runs: grouped by seed, paired differences, or exported as records",
                       description="Find every run below DIR (any depth; headers and logs only, no weights), print "
                       "the table grouped by configuration (mean ± std over seeds) and the paired differences "
                       "against the baselines with 95% intervals, the same numbers as the app's Runs page.")
    p.add_argument("dir")
    p.add_argument("--baseline", action="append", default=None, metavar="LABEL",
                   help="compare with this configuration (repeat; default: the dense and static ones)")
    p.add_argument("--metric", default="top1", choices=["top1", "top5"])
    p.add_argument("--export", default=None, metavar="OUT",
                   help="write a run record (svite-run.json: config, curves, summary; no weights) per run into OUT")
    p.add_argument("--json", action="store_true")
    p.add_argument("--curves", action="store_true", help="with --json: each run's curves too (per epoch, per "
                   "logged step, per snapshot, per topology update)")
    p.set_defaults(func=cmd_runs)


def cmd_runs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import runs

    root = Path(args.dir)
    if not root.is_dir():
        raise SviteError(f"{'not a folder' if root.exists() else 'no such folder'} (svite runs takes a folder "
                         "of runs)", path=root)
    if args.export:
        written, notes = runs.export_records(root, args.export)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        print(f"wrote {len(written)} run records ({sum(p.stat().st_size for p in written) / 1e3:.1f} kB) to {args.export}")
        return 0
    table, notes = runs.index_runs(root)
    labels = set(runs.with_labels(table)["label"]) if len(table) else set()
    unknown = [b for b in args.baseline or [] if b not in labels]
    if unknown:
        raise SviteError(f"--baseline {unknown[0]}: no such configuration below {root} "
                         f"(there are: {', '.join(sorted(labels)) or 'none'})")
    if args.curves and not args.json:
        raise FlagError("--curves", "--curves adds each run's curves to the JSON document: pass --json too")
    if args.json:
        from .analysis.report import to_json

        doc = runs.runs_document(table, notes, str(root), args.metric, args.baseline)
        for row in doc["runs"] if args.curves else []:
            curves = runs.run_curves(row["path"], row["source"])
            row["curves"] = {**curves.as_record(), "source": curves.source, "note": curves.note}
        print(to_json(doc))
        return 0
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(runs.status_line(table) + f" below {root}\n")
    print(runs.results_markdown(table, args.metric, args.baseline) if len(table) else "no runs found")
    return 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="rewrite an older checkpoint of ours in the current format; nothing lost, "
                       "checked after writing; NEW must not exist and OLD is never changed")
    p.add_argument("path", metavar="OLD")
    p.add_argument("out", metavar="NEW")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoint.convert import convert_file

    _emit(convert_file(args.path, args.out), args.json)
    return 0


#: The explorer's package, started by ``svite app`` as a Streamlit script (the core never imports it).
EXPLORER_PACKAGE = "app"
#: The app's Streamlit settings: ``.streamlit/config.toml`` of a checkout says the same, but is not installed.
STREAMLIT_FLAGS = ("--server.headless", "true", "--server.maxUploadSize", "400", "--server.runOnSave", "false",
                   "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer", "--theme.base", "light")


def _add_app(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="start the explorer on a folder of runs (like tensorboard --logdir)",
                       description="Start SViTE Explorer (a Streamlit server on localhost) from wherever the "
                       "package is installed, showing every run below --runs DIR at any depth (ours, Recorder "
                       "runs, DeiT/SViTE, timm and TensorBoard folders) and any checkpoint you upload.")
    p.add_argument("--runs", default="runs", metavar="DIR", help="folder of runs (default: ./runs)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--host", default="localhost", help="address to listen on (default localhost; 0.0.0.0 shares it)")
    p.set_defaults(func=cmd_app)


def explorer_script() -> Path:
    """The explorer's entry script, from the installed (or checked-out) ``app`` package, found without
    importing it; a missing or foreign ``app`` package is one line."""
    import importlib.util

    spec = importlib.util.find_spec(EXPLORER_PACKAGE)
    folder = Path(spec.origin).parent if spec is not None and spec.origin else None
    if folder is None or not (folder / "main.py").is_file() or not (folder / "settings.py").is_file():
        raise SviteError("the explorer is not installed beside this package (no 'app' package with main.py); "
                         "reinstall svite-explorer")
    return folder / "main.py"


def cmd_app(args: argparse.Namespace) -> int:
    import subprocess

    runs = Path(args.runs).expanduser()
    if runs.exists() and not runs.is_dir():
        raise SviteError(f"--runs {args.runs}: not a folder")
    if not 1 <= args.port <= 65535:
        raise FlagError("--port", f"--port {args.port}: not a port number (1-65535)")
    script = explorer_script()
    env = {**os.environ, "SVITE_RUNS_DIR": str(runs.resolve())}
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(args.port),
           "--server.address", args.host, "--browser.serverAddress", args.host, *STREAMLIT_FLAGS]
    print(f"svite app: runs below {runs.resolve()}{'' if runs.is_dir() else ' (none yet)'}; "
          f"open http://{args.host}:{args.port}", file=sys.stderr)
    try:
        return subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL).returncode
    except KeyboardInterrupt:
        return 130


def _emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        from .analysis.report import to_json

        print(to_json(result))
        return
    for key, value in result.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            print(f"{key}:")
            for row in value:
                print("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()))
        else:
            print(f"{key}: {_fmt(value)}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    if isinstance(value, list):  # e.g. eval's classes_left_out: names, not a Python repr
        return ", ".join(_fmt(v) for v in value) if value else "none"
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="svite", description="SViTE Explorer: sparse ViT training and inspection")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    _add_eval(sub)
    _add_inspect(sub)
    _add_check(sub)
    _add_compact(sub)
    _add_runs(sub)
    _add_convert(sub)
    _add_app(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Nothing we load comes from a hub: the command keeps Hugging Face offline for itself and the runs it
    # starts (set before timm is first imported; an explicit HF_HUB_OFFLINE=0 wins). The library does not.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # usage errors (exit 2) and --help (exit 0) end here, one line each
        return int(exit_.code or 0)
    args.argv = argv
    try:
        return int(args.func(args) or 0)
    except SviteError as err:
        return _bad_input(args.command, err.sentence())
    except OSError as err:  # the filesystem said no (missing, read-only, full, not a directory): not a bug
        where = f"{err.filename}: " if err.filename else ""
        return _bad_input(args.command, f"{where}{err.strerror or one_line(err)}")
    except MemoryError:
        return _bad_input(args.command, "out of memory; use smaller sizes (--batch-size, --train-size, --img-size)")
    except KeyboardInterrupt:
        print(f"svite {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # an internal error: still one line unless asked for the traceback
        if type(err).__name__ == "OutOfMemoryError":  # torch's, for the accelerator: sizes the user chose
            return _bad_input(args.command, "out of GPU memory; use a smaller --batch-size")
        if os.environ.get("SVITE_DEBUG"):
            traceback.print_exc()
        print(f"svite {args.command}: internal error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
              " (set SVITE_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


def _bad_input(command: str, message: str) -> int:
    print(f"svite {command}: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


