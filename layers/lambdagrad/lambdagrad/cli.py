"""The ``lambdagrad`` command: train, evaluate, predict.

``train`` runs the real state machine: on the embedded engine by default (no AWS
account needed), or on a deployed stack with ``--stack NAME``. Either way the same
:class:`~lambdagrad.client.StackClient` starts the job and follows its status.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import secrets
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lambdagrad import __version__
from lambdagrad.artifact import ArtifactError, TrainedModel, write_directory_atomically
from lambdagrad.client import JobFailedError, StackClient, StackError
from lambdagrad.data import DataError, load_dataset
from lambdagrad.spec import DEFAULT_LEARNING_RATE, JobSpec, SpecError, parse_spec
from lambdagrad.store import StoreError
from lambdagrad.tabular import read_features, read_labelled
from lambdagrad.training import infer_task

__all__ = ["main"]

USER_ERRORS = (
    SpecError,
    DataError,
    StoreError,
    ArtifactError,
    JobFailedError,
    StackError,
    FileNotFoundError,
    IsADirectoryError,
    TimeoutError,
)


class CliError(RuntimeError):
    """A usage problem found after argument parsing (bad combination, unreadable file)."""


# ---- spec from flags ------------------------------------------------------------------
# flag destination -> (spec group, field)
SPEC_FLAGS: dict[str, tuple[str, str]] = {
    "label": ("dataset", "label"),
    "format": ("dataset", "format"),
    "validation": ("dataset", "validation"),
    "standardize": ("dataset", "standardize"),
    "model": ("model", "type"),
    "hidden": ("model", "hidden"),
    "activation": ("model", "activation"),
    "task": ("model", "task"),
    "l1": ("model", "l1"),
    "l2": ("model", "l2"),
    "optimizer": ("optimizer", "name"),
    "lr": ("optimizer", "learning_rate"),
    "momentum": ("optimizer", "momentum"),
    "beta1": ("optimizer", "beta1"),
    "beta2": ("optimizer", "beta2"),
    "eps": ("optimizer", "eps"),
    "weight_decay": ("optimizer", "weight_decay"),
    "clip_norm": ("optimizer", "clip_norm"),
    "schedule": ("optimizer", "schedule"),
    "decay_steps": ("optimizer", "decay_steps"),
    "decay_rate": ("optimizer", "decay_rate"),
    "final_lr": ("optimizer", "final_lr"),
    "warmup": ("optimizer", "warmup"),
    "batch_size": ("training", "batch_size"),
    "workers": ("training", "workers"),
    "epochs": ("training", "epochs"),
    "rounds": ("training", "rounds"),
    "tolerance": ("training", "tolerance"),
    "seed": ("training", "seed"),
    "segment_rounds": ("training", "segment_rounds"),
    "patience": ("training", "patience"),
    "min_delta": ("training", "min_delta"),
}


def _batch_size(text: str) -> int | str:
    if text == "full":
        return "full"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'full', got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"batch size must be >= 1, got {value}")
    return value


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 128,64, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes like 128,64, got {text!r}")
    return sizes


def _read_config(path: str) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{path} line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}"
        ) from None
    if not isinstance(doc, dict):
        raise CliError(f"{path}: a job spec must be a JSON object")
    return doc


def spec_from_args(args: argparse.Namespace, dataset_uri: str | None) -> JobSpec:
    """Merge --config (if any) with the flags given; flags win."""
    doc: dict[str, Any] = _read_config(args.config) if args.config else {}
    doc = {k: dict(v) if isinstance(v, dict) else v for k, v in doc.items()}
    for dest, (group, field) in SPEC_FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        section = doc.setdefault(group, {})
        if not isinstance(section, dict):
            raise CliError(f"--config: '{group}' must be an object")
        section[field] = value
        # A length given on the command line replaces the config's other length.
        if field in ("epochs", "rounds"):
            section.pop("rounds" if field == "epochs" else "epochs", None)
    if dataset_uri is not None:
        doc.setdefault("dataset", {})["uri"] = dataset_uri
    if args.job_id:
        doc["job_id"] = args.job_id
    if "uri" not in doc.get("dataset", {}):
        raise CliError("no dataset: give DATA or a --config with dataset.uri")
    return parse_spec(doc)


def _default_job_id(data: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(data).stem)[:24].strip("-_")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stem or 'job'}-{stamp}-{secrets.token_hex(2)}"


# ---- engines --------------------------------------------------------------------------
def find_template() -> Path:
    """template.yaml of this checkout: next to the package's repository, or the cwd."""
    here = Path(__file__).resolve()
    for candidate in [Path.cwd(), *here.parents]:
        path = candidate / "template.yaml"
        if path.is_file() and (candidate / "statemachine" / "train.asl.json").is_file():
            return path
    raise CliError(
        "cannot find template.yaml for the embedded engine; run from the lambdagrad checkout "
        "or pass --template"
    )


@contextlib.contextmanager
def open_stack(args: argparse.Namespace) -> Iterator[StackClient]:
    """A client for --stack NAME, or for the template deployed on the embedded engine."""
    if getattr(args, "stack", None):
        yield StackClient.from_stack(args.stack, args.region)
        return
    from lambdagrad.local.engine import LocalEngine

    template = Path(args.template) if getattr(args, "template", None) else find_template()
    with LocalEngine(template) as engine:
        yield StackClient.from_outputs(engine.outputs, engine.client)


# ---- progress -------------------------------------------------------------------------
class Progress:
    """A rich progress bar of rounds with the latest losses (quiet when not wanted)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("train {task.fields[train]}  val {task.fields[val]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=_stderr_console(),
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("preparing", total=None, train="-", val="-")
        return self

    def update(self, status: dict[str, Any]) -> None:
        if not self._bar:
            return

        def fmt(v: Any) -> str:
            return "-" if v is None else f"{v:.4g}"

        self._bar.update(
            self._task,
            description=status.get("state", "").lower(),
            completed=status.get("round", 0),
            total=status.get("rounds"),
            train=fmt(status.get("train_loss")),
            val=fmt(status.get("validation_loss")),
        )

    def __exit__(self, *exc: object) -> None:
        if self._bar:
            self._bar.__exit__(*exc)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


# ---- commands -------------------------------------------------------------------------
def _prepare_data(args: argparse.Namespace, spec: JobSpec) -> None:
    """Check a local dataset before anything starts: bad data fails in a second, not a deploy."""
    path = Path(args.data)
    data, fmt, label = path.read_bytes(), spec.dataset.format, spec.dataset.label
    task = spec.model.task
    if task == "auto":
        task = infer_task(data, source=path.name, fmt=fmt, label=label)
    load_dataset(data, source=path.name, fmt=fmt, label=label, task=task)


def cmd_train(args: argparse.Namespace) -> int:
    local_data = args.data is not None and not args.data.startswith("s3://")
    if local_data and not Path(args.data).is_file():
        raise CliError(f"{args.data}: no such file")
    placeholder = "s3://placeholder-bucket/" + Path(args.data).name if local_data else args.data
    spec = spec_from_args(args, placeholder)
    if local_data:
        _prepare_data(args, spec)
    job_id = spec.job_id or _default_job_id(args.data or spec.dataset.uri)
    out = Path(args.out) if args.out else Path("runs") / job_id
    if (out / "model.json").exists() and not args.overwrite:
        raise CliError(f"{out} already holds a model; pass --overwrite or choose another --out")

    started = time.monotonic()
    with open_stack(args) as stack:
        uri = stack.upload_dataset(Path(args.data)) if local_data else spec.dataset.uri
        spec = spec.model_copy(
            update={"job_id": job_id, "dataset": spec.dataset.model_copy(update={"uri": uri})}
        )
        spec = parse_spec(json.loads(spec.model_dump_json()))
        stack.start(spec)
        if not args.quiet:
            _stderr_console().print(
                f"job [bold]{job_id}[/]: {spec.model.type} / {spec.optimizer.name} "
                f"lr={spec.optimizer.lr} batch={spec.training.batch_size} "
                f"workers={spec.training.workers}"
            )
        with Progress(enabled=not args.quiet and not args.json) as progress:
            status = stack.follow(job_id, on_status=progress.update)
        files = stack.model_files(job_id)
    seconds = time.monotonic() - started

    from lambdagrad.plot import loss_curve_png

    files["loss.png"] = loss_curve_png(files["history.csv"], title=f"{job_id}")
    write_directory_atomically(out, files)
    summary = {
        "job_id": job_id,
        "out": str(out),
        "rounds": status.get("round"),
        "seconds": round(seconds, 2),
    }
    summary.update(status.get("metrics") or {})
    if args.json:
        print(json.dumps(summary))
    else:
        _print_train_summary(summary)
    return 0


def _print_train_summary(summary: dict[str, Any]) -> None:
    val = summary.get("validation") or {}
    parts = [f"{k} {v:.4g}" for k, v in val.items() if k != "rows" and isinstance(v, float)]
    train_loss = summary.get("train_loss")
    val_loss = summary.get("validation_loss")
    print(
        f"done: {summary['rounds']} rounds in {summary['seconds']} s; "
        f"train loss {train_loss:.4g}"
        + (f", validation loss {val_loss:.4g}" if val_loss is not None else "")
        + (f" ({', '.join(parts)})" if parts else "")
        + f"\nmodel written to {summary['out']}/ (model.npz, model.json, history.csv, loss.png)"
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    trained = TrainedModel.load(args.run)
    label = args.label or trained.info.get("spec", {}).get("dataset", {}).get("label")
    path = Path(args.data)
    X, y = read_labelled(
        path.read_bytes(), source=path.name, fmt=args.format, label=label, trained=trained
    )
    metrics = trained.evaluate(X, y)
    if args.json:
        print(json.dumps(metrics))
    else:
        for name, value in metrics.items():
            print(
                f"{name:>10}  {value:.6g}" if isinstance(value, float) else f"{name:>10}  {value}"
            )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    trained = TrainedModel.load(args.run)
    path = Path(args.data)
    X = read_features(path.read_bytes(), source=path.name, fmt=args.format, trained=trained)
    predictions = trained.predict(X)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["prediction"])
    writer.writerows([p] for p in predictions)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(buf.getvalue())
        tmp.replace(out)
        print(f"{len(predictions)} predictions written to {out}", file=sys.stderr)
    else:
        sys.stdout.write(buf.getvalue())
    return 0


# ---- parser ---------------------------------------------------------------------------
def _add_stack_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where to run")
    g.add_argument("--stack", help="name of a deployed lambdagrad stack (default: embedded engine)")
    g.add_argument("--region", help="AWS region of --stack (default: your AWS config)")
    g.add_argument(
        "--template", help="template.yaml for the embedded engine (default: this checkout's)"
    )


def _show_spec_defaults(parser: argparse.ArgumentParser) -> None:
    """Append each spec field's default to its flag's help, read from the spec model itself."""
    groups = {name: field.annotation for name, field in JobSpec.model_fields.items()}
    for action in parser._actions:
        if action.dest not in SPEC_FLAGS or action.help is None or "default" in action.help:
            continue
        group, field = SPEC_FLAGS[action.dest]
        default = groups[group].model_fields[field].default
        if default is not None:
            action.help += f" (default: {default})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lambdagrad",
        description="Train models on serverless AWS, or locally on the same state machine.",
    )
    parser.add_argument("--version", action="version", version=f"lambdagrad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    fmt = argparse.HelpFormatter
    train = sub.add_parser("train", help="train a model", formatter_class=fmt)
    train.add_argument(
        "data", nargs="?", help="CSV/.npy/.npz file, or s3://bucket/key with --stack"
    )
    train.add_argument("--config", help="job spec JSON; flags override its fields")
    d = train.add_argument_group("data")
    d.add_argument(
        "--label", help="label column (CSV) or column index (.npy); default: last column"
    )
    d.add_argument(
        "--format", choices=["csv", "npy", "npz"], help="file format; default: from the extension"
    )
    d.add_argument("--validation", type=float, help="held-out fraction, 0 allowed")
    d.add_argument(
        "--no-standardize",
        dest="standardize",
        action="store_const",
        const=False,
        help="keep features as they are (default: scale to zero mean, unit variance)",
    )
    m = train.add_argument_group("model")
    m.add_argument("--model", choices=["linear", "logistic", "softmax", "mlp"], help="model")
    m.add_argument(
        "--hidden", type=_sizes, help="mlp hidden layer sizes, e.g. 128,64 (default: 64)"
    )
    m.add_argument(
        "--activation", choices=["relu", "tanh", "sigmoid", "gelu"], help="mlp activation"
    )
    m.add_argument(
        "--task",
        choices=["auto", "regression", "classification"],
        help="mlp: what to predict; auto decides from the labels",
    )
    m.add_argument("--l1", type=float, help="L1 penalty l1*|w| on weights, as a proximal step")
    m.add_argument("--l2", type=float, help="L2 penalty 0.5*l2*||w||^2 on weights")
    o = train.add_argument_group("optimizer")
    o.add_argument(
        "--optimizer",
        choices=["sgd", "momentum", "nesterov", "adam", "adamw", "adagrad", "rmsprop"],
        help="optimizer",
    )
    o.add_argument(
        "--lr",
        type=float,
        help="learning rate (default: "
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_LEARNING_RATE.items())
        + ")",
    )
    o.add_argument("--momentum", type=float, help="momentum / nesterov coefficient")
    o.add_argument("--beta1", type=float, help="Adam/AdamW beta1")
    o.add_argument("--beta2", type=float, help="Adam/AdamW beta2")
    o.add_argument("--eps", type=float, help="Adam/AdamW/RMSProp epsilon")
    o.add_argument("--weight-decay", type=float, help="AdamW decoupled weight decay")
    o.add_argument("--clip-norm", type=float, help="clip the gradient's global L2 norm to this")
    o.add_argument(
        "--schedule",
        choices=["constant", "step", "exponential", "inverse_time", "cosine"],
        help="learning-rate schedule over rounds",
    )
    o.add_argument("--decay-steps", type=int, help="step schedule: rounds between drops")
    o.add_argument(
        "--decay-rate",
        type=float,
        help="step/exponential: factor per drop/round; inverse_time: decay",
    )
    o.add_argument("--final-lr", type=float, help="cosine schedule: learning rate at the end")
    o.add_argument("--warmup", type=int, help="rounds of linear warm-up before the schedule")
    t = train.add_argument_group("training")
    t.add_argument(
        "--batch-size",
        type=_batch_size,
        help="global batch per round: integer (1 = SGD) or 'full' (batch GD)",
    )
    t.add_argument("--workers", type=int, help="data shards, one Lambda worker each")
    length = t.add_mutually_exclusive_group()
    length.add_argument(
        "--epochs",
        type=float,
        help="passes over the data; default 20, or 100 with --batch-size full",
    )
    length.add_argument("--rounds", type=int, help="optimizer steps, instead of --epochs")
    t.add_argument("--tolerance", type=float, help="stop when relative change of train loss < this")
    t.add_argument(
        "--patience",
        type=int,
        help="early stopping: rounds without validation gain; keeps the best round",
    )
    t.add_argument("--min-delta", type=float, help="early stopping: the least gain that counts")
    t.add_argument("--seed", type=int, help="seed for split, initialisation and sampling")
    t.add_argument(
        "--segment-rounds",
        type=int,
        help="rounds per execution before continue-as-new; default from --workers",
    )
    t.add_argument("--job-id", help="job id (default: from the data name and time)")
    out = train.add_argument_group("output")
    out.add_argument("--out", help="output directory (default runs/JOB_ID)")
    out.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    out.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    _add_stack_flags(train)
    _show_spec_defaults(train)
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser(
        "evaluate", help="score a trained model on labelled data", formatter_class=fmt
    )
    ev.add_argument("run", help="training output directory (holds model.json)")
    ev.add_argument("data", help="CSV/.npy/.npz file with the label column")
    ev.add_argument("--label", help="label column (default: the one the model was trained on)")
    ev.add_argument("--format", choices=["csv", "npy", "npz"])
    ev.add_argument("--json", action="store_true", help="print exactly one JSON object")
    ev.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="predict with a trained model", formatter_class=fmt)
    pr.add_argument("run", help="training output directory (holds model.json)")
    pr.add_argument("data", help="CSV/.npy/.npz file with the model's feature columns")
    pr.add_argument("--format", choices=["csv", "npy", "npz"])
    pr.add_argument("--out", help="CSV to write (default: standard output)")
    pr.set_defaults(func=cmd_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CliError, *USER_ERRORS) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, FileNotFoundError | IsADirectoryError) and exc.filename:
            message = f"{exc.filename}: {exc.strerror.lower() if exc.strerror else 'not found'}"
        print(f"error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
