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
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lambdagrad import __version__
from lambdagrad.artifact import ArtifactError, TrainedModel, write_directory_atomically
from lambdagrad.client import JobFailedError, StackClient, StackError
from lambdagrad.cost import RUNNING_ORCHESTRATION, CostError
from lambdagrad.data import DataError, load_dataset
from lambdagrad.registry import RegistryError, list_models, lookup, promote
from lambdagrad.resume import ResumeError
from lambdagrad.spec import DEFAULT_LEARNING_RATE, MAX_SPEC_BYTES, JobSpec, SpecError, parse_spec
from lambdagrad.store import StoreError, is_claim_key
from lambdagrad.sweep import SweepError
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
    RegistryError,
    SweepError,
    CostError,
    ResumeError,
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
    "steps_per_round": ("training", "steps_per_round"),
    "dtype": ("training", "dtype"),
    "model_name": ("output", "model_name"),
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


def _float_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.01,0.1, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _batch_list(text: str) -> list[int | str]:
    return [_batch_size(part.strip()) for part in text.split(",") if part.strip()]


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 128,64, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes like 128,64, got {text!r}")
    return sizes


def _read_config(path: str) -> dict[str, Any]:
    size = Path(path).stat().st_size
    if size > MAX_SPEC_BYTES:
        raise CliError(
            f"{path}: {size} bytes; a job spec is at most {MAX_SPEC_BYTES} "
            f"({MAX_SPEC_BYTES // 1024} KiB)"
        )
    raw = Path(path).read_bytes()
    try:
        doc = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CliError(f"{path} line {line}: not valid UTF-8 ({exc.reason})") from None
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


#: Where the embedded engine keeps a job's bucket on disk, inside the run directory.
STATE_DIRNAME = "state"


@contextlib.contextmanager
def open_stack(
    args: argparse.Namespace,
    state_dir: Path | None = None,
    restore: Callable[[str], bool] | None = None,
) -> Iterator[StackClient]:
    """A client for --stack NAME, or for the template deployed on the embedded engine
    (whose bucket is kept in ``state_dir``, if given, so that checkpoints outlive us;
    ``restore`` picks which of its keys are loaded back)."""
    if getattr(args, "stack", None):
        yield StackClient.from_stack(args.stack, args.region)
        return
    from lambdagrad.local.engine import LocalEngine

    template = Path(args.template) if getattr(args, "template", None) else find_template()
    with LocalEngine(template, state_dir=state_dir, restore=restore) as engine:
        if getattr(args, "chaos", None) is not None:  # dev flag: see lambdagrad.local.chaos
            from lambdagrad.local.chaos import start_for_cli

            args.chaos_run = start_for_cli(engine, args.chaos)
        stack = StackClient.from_outputs(engine.outputs, engine.client)
        stack.put_file = engine.put_file
        yield stack


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
def _prepare_data(args: argparse.Namespace, spec: JobSpec) -> Any:
    """Check a local dataset before anything starts: bad data fails in a second, not a deploy."""
    path = Path(args.data)
    data, fmt, label = path.read_bytes(), spec.dataset.format, spec.dataset.label
    task = spec.model.task
    if task == "auto":
        task = infer_task(data, source=path.name, fmt=fmt, label=label)
    return load_dataset(
        data,
        source=path.name,
        fmt=fmt,
        label=label,
        task=task,
        max_features=spec.dataset.max_features,
    )


def _spec_and_data(args: argparse.Namespace) -> tuple[bool, JobSpec]:
    """The spec from flags and --config, and whether DATA is a local file (checked here;
    its dataset URI is a placeholder until the file is uploaded to the stack)."""
    local_data = args.data is not None and not args.data.startswith("s3://")
    if local_data and not Path(args.data).is_file():
        raise CliError(f"{args.data}: no such file")
    placeholder = "s3://placeholder-bucket/" + Path(args.data).name if local_data else args.data
    spec = spec_from_args(args, placeholder)
    if local_data:
        _prepare_data(args, spec)
    return local_data, spec


def cmd_train(args: argparse.Namespace) -> int:
    if args.chaos is not None:
        from lambdagrad.local.chaos import check_cli_fraction

        try:
            check_cli_fraction(args.chaos, args.stack)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    local_data, spec = _spec_and_data(args)
    job_id = spec.job_id or _default_job_id(args.data or spec.dataset.uri)
    out = Path(args.out) if args.out else Path("runs") / job_id
    if (out / "model.json").exists() and not args.overwrite:
        raise CliError(f"{out} already holds a model; pass --overwrite or choose another --out")

    started = time.monotonic()
    # a new job: of earlier jobs in this run directory only their claims come back (their
    # ids stay taken); their datasets and checkpoints stay on disk for `resume`
    with open_stack(args, state_dir=out / STATE_DIRNAME, restore=is_claim_key) as stack:
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
        status, files, cost = _follow_and_fetch(args, stack, job_id)
    return _write_run(args, out, job_id, status, files, cost, started)


def _follow_and_fetch(
    args: argparse.Namespace, stack: StackClient, job_id: str
) -> tuple[dict[str, Any], dict[str, bytes], dict[str, Any] | None]:
    """Follow a started job to its end with a progress bar; fetch its model files and cost."""
    with Progress(enabled=not args.quiet and not args.json) as progress:
        status = stack.follow(job_id, on_status=progress.update)
    return status, stack.model_files(job_id), _job_cost(stack, job_id)


def _write_run(
    args: argparse.Namespace,
    out: Path,
    job_id: str,
    status: dict[str, Any],
    files: dict[str, bytes],
    cost: dict[str, Any] | None,
    started: float,
) -> int:
    """Write a finished job's model, history and loss curve to ``out``; print the summary."""
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
    summary["aws_dollars"] = cost["dollars"] if cost else None
    chaos = getattr(args, "chaos_run", None)
    if chaos is not None:
        summary["chaos"] = {**chaos.counts, "invocations": chaos.invocations, "survived": True}
    if args.json:
        print(json.dumps(summary))
    else:
        _print_train_summary(summary)
        if cost:
            print(_cost_line(cost))
        if chaos is not None:
            print(f"{chaos.summary()}; all retried, the job survived")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue a killed, failed or stopped job from its last complete checkpoint."""
    out = Path(args.out) if args.out else Path("runs") / args.job_id
    state_dir = None
    if not args.stack:
        state_dir = out / STATE_DIRNAME
        if not state_dir.is_dir():
            raise CliError(
                f"no local checkpoints of job {args.job_id} in {state_dir}/: give the --out "
                "it was trained with, or --stack NAME for a job on a deployed stack"
            )
    if (out / "model.json").is_file():
        owner = json.loads((out / "model.json").read_text()).get("job_id")
        if owner == args.job_id:
            raise ResumeError(f"job {args.job_id!r} already finished: its model is in {out}/")
        raise CliError(f"{out} holds the model of job {owner!r}; choose another --out")
    started = time.monotonic()
    with open_stack(args, state_dir=state_dir) as stack:
        start = stack.resume(args.job_id)
        if not args.quiet:
            _stderr_console().print(
                f"job [bold]{args.job_id}[/]: resumed from round {start['round']}"
            )
        status, files, cost = _follow_and_fetch(args, stack, args.job_id)
    return _write_run(args, out, args.job_id, status, files, cost, started)


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


def _predictions_csv(predictions: list[Any], out: str | None) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["prediction"])
    writer.writerows([p] for p in predictions)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(buf.getvalue())
        tmp.replace(path)
        print(f"{len(predictions)} predictions written to {path}", file=sys.stderr)
    else:
        sys.stdout.write(buf.getvalue())


PREDICT_CHUNK_ROWS = 1000


def cmd_predict(args: argparse.Namespace) -> int:
    if args.stack:
        if not args.model_name or len(args.paths) != 1:
            raise CliError("with --stack: lambdagrad predict --stack NAME --model-name MODEL DATA")
        path = Path(args.paths[0])
        with open_stack(args) as stack:
            pointer = lookup(stack.store, args.model_name)
            trained = TrainedModel.from_documents(
                stack.store.get_bytes(pointer["npz_key"]),
                stack.store.get_json(pointer["model_key"]),
            )
            X = read_features(path.read_bytes(), source=path.name, fmt=args.format, trained=trained)
            predictions: list[Any] = []
            for start in range(0, len(X), PREDICT_CHUNK_ROWS):
                rows = X[start : start + PREDICT_CHUNK_ROWS].tolist()
                predictions += stack.predict(args.model_name, rows)["predictions"]
        _predictions_csv(predictions, args.out)
        return 0
    if len(args.paths) != 2:
        raise CliError("lambdagrad predict RUN_DIR DATA (or --stack NAME --model-name MODEL DATA)")
    run, data = args.paths
    trained = TrainedModel.load(run)
    path = Path(data)
    X = read_features(path.read_bytes(), source=path.name, fmt=args.format, trained=trained)
    _predictions_csv(trained.predict(X), args.out)
    return 0


def _require_stack(args: argparse.Namespace, what: str) -> None:
    if not args.stack:
        raise CliError(f"{what} lives in a deployed stack's bucket: pass --stack NAME")


def cmd_models(args: argparse.Namespace) -> int:
    _require_stack(args, "the model registry")
    with open_stack(args) as stack:
        if args.models_command == "promote":
            pointer = promote(stack.store, args.name, args.job_id)
            print(f"model {pointer['name']} now serves job {pointer['job_id']}")
            return 0
        models = list_models(stack.store)
    if args.json:
        print(json.dumps(models, default=str))
        return 0
    if not models:
        print("no models registered (train with --model-name NAME, or models promote)")
    for m in models:
        metrics = (m.get("metrics") or {}).get("validation") or {}
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        print(f"{m['name']:<24} job {m['job_id']:<40} {m.get('model_type') or '':<8} {shown}")
    return 0


def _follow_with_progress(stack: StackClient, job_id: str, quiet: bool) -> dict[str, Any]:
    with Progress(enabled=not quiet) as progress:
        return stack.follow(job_id, on_status=progress.update)


def cmd_submit(args: argparse.Namespace) -> int:
    doc = _read_config(args.spec)
    doc.pop("job_id", None)  # the upload's key and ETag name the job
    with open_stack(args) as stack:
        if args.data:
            doc.setdefault("dataset", {})["uri"] = stack.upload_dataset(Path(args.data))
        parse_spec({**doc, "job_id": "check"})  # a bad spec fails here, before any upload
        stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(args.spec).stem)
        name = f"{stem[:24]}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
        job_id = stack.submit(doc, name)
        print(job_id)
        if args.follow or not args.stack:  # the embedded engine ends with this process
            status = _follow_with_progress(stack, job_id, args.quiet)
            print(json.dumps(status) if args.json else f"{job_id}: {status['state']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    _require_stack(args, "a job's status")
    with open_stack(args) as stack:
        status = (
            _follow_with_progress(stack, args.job_id, args.quiet)
            if args.follow
            else stack.status(args.job_id)
        )
        cost = _job_cost(stack, args.job_id) if status.get("state") == "SUCCEEDED" else None
    if args.json:
        print(json.dumps({**status, "cost": cost} if cost else status))
    else:
        line = f"{args.job_id}: {status.get('state')}"
        if status.get("rounds"):
            line += f", round {status.get('round', 0)}/{status['rounds']}"
        if status.get("train_loss") is not None:
            line += f", train loss {status['train_loss']:.4g}"
        if status.get("error"):
            line += f"\n{status['error']}: {status.get('message', '')}"
        print(line)
        if cost:
            from lambdagrad.cost_report import print_cost

            print_cost(cost, notes=False)
            print(_cost_line(cost))
    return 0 if status.get("state") != "FAILED" else 1


def cmd_sweep(args: argparse.Namespace) -> int:
    from lambdagrad import sweep_report
    from lambdagrad.plot import loss_curve_png
    from lambdagrad.sweep import expand_grid, result_key, sweep_input

    grid: dict[str, list[Any]] = {}
    if args.lr:
        grid["optimizer.learning_rate"] = args.lr
    if args.batch_size:
        grid["training.batch_size"] = args.batch_size
    if not grid:
        raise CliError(
            "give comma lists to sweep over: --lr 0.001,0.01,0.1 --batch-size 16,64,full"
        )
    args.lr, args.batch_size = None, None
    local_data, spec = _spec_and_data(args)
    sweep_id = args.sweep_id or _default_job_id(args.data or spec.dataset.uri)[:50]
    out = Path(args.out) if args.out else Path("runs") / sweep_id
    with open_stack(args) as stack:
        uri = stack.upload_dataset(Path(args.data)) if local_data else spec.dataset.uri
        base = json.loads(spec.model_dump_json())
        base["dataset"]["uri"] = uri
        base.pop("job_id", None)
        points = expand_grid(base, grid)
        arn = stack.start_sweep(sweep_input(sweep_id, points, args.concurrency))
        if not args.quiet and not args.json:
            _stderr_console().print(
                f"sweep [bold]{sweep_id}[/]: {len(points)} points, "
                f"at most {args.concurrency} at once"
            )
        desc = stack.wait_execution(arn, poll_seconds=0.5)
        if desc["status"] != "SUCCEEDED":
            raise JobFailedError(
                sweep_id, desc.get("error") or desc["status"], desc.get("cause") or ""
            )
        result = stack.store.get_json(result_key(sweep_id))
        best = result.get("best")
        best_files = stack.model_files(best["job_id"]) if best else None
    files = {
        "result.json": json.dumps(result, indent=2).encode(),
        "curves.png": sweep_report.curves_png(result),
    }
    if len(grid) == 2:
        files["heatmap.png"] = sweep_report.heatmap_png(result)
    write_directory_atomically(out, files)
    if best_files:
        best_files["loss.png"] = loss_curve_png(best_files["history.csv"], title=best["job_id"])
        write_directory_atomically(out / "best", best_files)
    if args.json:
        print(json.dumps(sweep_report.summary_json(result)))
    else:
        print(sweep_report.table(result))
        print(
            f"results in {out}/ (result.json, curves.png{', heatmap.png' if len(grid) == 2 else ''}"
            f"{', best/' if best_files else ''})"
        )
    return 0


# ---- cost -----------------------------------------------------------------------------
def _job_cost(stack: StackClient, job_id: str) -> dict[str, Any] | None:
    """A finished job's cost.json, or None (older jobs have none)."""
    from lambdagrad.cost import cost_key

    try:
        return stack.store.get_json(cost_key(job_id))
    except StoreError:
        return None


def _cost_line(cost: dict[str, Any]) -> str:
    return (
        f"AWS cost of what ran: ${cost['dollars']:.6f} "
        f"({cost['rounds']} rounds, prices of {cost['prices']['as_of']})"
    )


def _template_memory(args: argparse.Namespace) -> tuple[int, str]:
    """WorkerMemorySize from the template (its default), and where it came from."""
    from lambdagrad.cost import DEFAULT_MEMORY_MB, function_memory_mb

    try:
        template = Path(args.template) if args.template else find_template()
    except CliError:
        return DEFAULT_MEMORY_MB, "default (no template.yaml found)"
    from lambdagrad.local.sam import load_template

    return function_memory_mb(load_template(template)), str(template)


def cmd_estimate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from lambdagrad.cost import DEFAULT_DURATIONS, JobShape, estimate, price_overrides
    from lambdagrad.cost_report import print_cost
    from lambdagrad.pricing import DEFAULT_PRICES

    prices = price_overrides(DEFAULT_PRICES, args.price or [])
    local_data = args.data is not None and not args.data.startswith("s3://")
    if local_data and not Path(args.data).is_file():
        raise CliError(f"{args.data}: no such file")
    placeholder = "s3://placeholder-bucket/" + Path(args.data).name if local_data else args.data
    spec = spec_from_args(args, placeholder)
    rows, features, classes = args.rows, args.features, args.classes
    if local_data:
        data = _prepare_data(args, spec)
        rows = rows or len(data.y)
        features = features or data.X.shape[1]
        classes = classes or len(data.classes or [])
    elif rows is None or features is None:
        raise CliError(
            f"{spec.dataset.uri} is not a local file: give its size with --rows N --features D"
        )
    for name, value in (("--rows", rows), ("--features", features)):
        if value < 1:
            raise CliError(f"{name}: {value} (must be at least 1)")
    if spec.model.task == "regression" or spec.model.type == "linear":
        classes = 1
    elif not classes:
        classes = 2
    if spec.training.workers > rows:
        raise CliError(f"--workers: {spec.training.workers} workers for {rows} rows")
    if args.memory is not None and not 128 <= args.memory <= 10_240:
        raise CliError(f"--memory: {args.memory} MB (Lambda allows 128 to 10240)")
    if args.s3_latency is not None and not args.s3_latency >= 0:
        raise CliError(f"--s3-latency: {args.s3_latency} (seconds, at least 0)")
    memory, memory_from = (args.memory, "--memory") if args.memory else _template_memory(args)
    durations = DEFAULT_DURATIONS
    if args.s3_latency is not None:
        durations = replace(durations, s3_request_s=args.s3_latency)
    shape = JobShape.from_spec(spec, rows, features, classes)
    bill = estimate(
        shape,
        orchestration=args.orchestration,
        inline_gradients=args.inline_gradients,  # None: as the workers decide
        memory_mb=memory,
        durations=durations,
        prices=prices,
    ).to_json()
    bill["details"]["memory_from"] = memory_from
    if args.json:
        print(json.dumps(bill))
    else:
        print_cost(bill)
    return 0


def _add_estimate_parser(sub: Any) -> None:
    es = sub.add_parser(
        "estimate",
        help="the AWS bill of a job before it runs (Lambda, S3, Step Functions)",
        formatter_class=argparse.HelpFormatter,
    )
    es.add_argument(
        "data",
        nargs="?",
        help="local CSV/.npy/.npz (rows and features are read from it), or s3://bucket/key",
    )
    es.add_argument("--config", help="job spec JSON; flags override its fields")
    _add_spec_flags(es)
    c = es.add_argument_group("cost")
    c.add_argument("--rows", type=int, help="dataset rows (required for s3:// data)")
    c.add_argument("--features", type=int, help="dataset features (required for s3:// data)")
    c.add_argument("--classes", type=int, help="label classes (s3:// data; default 2)")
    c.add_argument(
        "--orchestration",
        choices=["standard", "express"],
        default=RUNNING_ORCHESTRATION,
        help="rounds in the Standard execution, or in an Express child per segment (deployed)",
    )
    c.add_argument(
        "--inline-gradients",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="gradients travel in the workers' results (--no-...: via S3); default: as the "
        "workers decide, inline when parameters x bytes x workers <= 32 KiB",
    )
    c.add_argument("--memory", type=int, help="Lambda MB (default: the template's)")
    c.add_argument("--s3-latency", type=float, help="seconds per S3 request in the duration model")
    c.add_argument(
        "--price",
        action="append",
        metavar="NAME=DOLLARS",
        help="override a unit price, e.g. lambda_gb_second=0.0000166667 (repeatable)",
    )
    c.add_argument("--json", action="store_true", help="print the bill as one JSON object")
    c.add_argument("--template", help="template.yaml to read WorkerMemorySize from")
    _show_spec_defaults(es)
    es.set_defaults(func=cmd_estimate, job_id=None, model_name=None)


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


def _add_spec_flags(p: argparse.ArgumentParser, *, lists: bool = False) -> Any:
    """The job spec's flags, grouped; ``lists`` makes --lr and --batch-size comma lists.

    Returns the "training" group, for flags that follow it."""
    d = p.add_argument_group("data")
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
    m = p.add_argument_group("model")
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
    o = p.add_argument_group("optimizer")
    o.add_argument(
        "--optimizer",
        choices=["sgd", "momentum", "nesterov", "adam", "adamw", "adagrad", "rmsprop"],
        help="optimizer",
    )
    o.add_argument(
        "--lr",
        type=_float_list if lists else float,
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
    t = p.add_argument_group("training")
    t.add_argument(
        "--batch-size",
        type=_batch_list if lists else _batch_size,
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
        "--dtype",
        choices=("float64", "float32"),
        help="float32: shards and gradients in float32 (half the bytes); default float64",
    )
    t.add_argument(
        "--segment-rounds",
        type=int,
        help="most rounds per Express segment (also cut by time); default from --workers",
    )
    t.add_argument(
        "--steps-per-round",
        type=int,
        help="local SGD: K local steps per worker per round, then the reducer averages",
    )
    return t


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
    t = _add_spec_flags(train)
    t.add_argument("--job-id", help="job id (default: from the data name and time)")
    t.add_argument("--model-name", help="register the model under this name when it succeeds")
    out = train.add_argument_group("output")
    out.add_argument("--out", help="output directory (default runs/JOB_ID)")
    out.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    out.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    train.add_argument_group("development").add_argument(
        "--chaos",
        type=float,
        metavar="FRACTION",
        help="fail this fraction of worker/reducer invocations (embedded engine only)",
    )
    _add_stack_flags(train)
    _show_spec_defaults(train)
    train.set_defaults(func=cmd_train)

    re_ = sub.add_parser(
        "resume",
        help="continue a killed, failed or stopped job from its last checkpoint",
        formatter_class=fmt,
    )
    re_.add_argument("job_id", help="the job to continue")
    rout = re_.add_argument_group("output")
    rout.add_argument(
        "--out",
        help="run directory given to train (default runs/JOB_ID); on the embedded engine its "
        f"{STATE_DIRNAME}/ folder holds the checkpoints",
    )
    rout.add_argument("--quiet", action="store_true", help="no progress bar")
    rout.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    _add_stack_flags(re_)
    re_.set_defaults(func=cmd_resume)

    ev = sub.add_parser(
        "evaluate", help="score a trained model on labelled data", formatter_class=fmt
    )
    ev.add_argument("run", help="training output directory (holds model.json)")
    ev.add_argument("data", help="CSV/.npy/.npz file with the label column")
    ev.add_argument("--label", help="label column (default: the one the model was trained on)")
    ev.add_argument("--format", choices=["csv", "npy", "npz"])
    ev.add_argument("--json", action="store_true", help="print exactly one JSON object")
    ev.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser(
        "predict",
        help="predict with a trained model",
        usage="lambdagrad predict RUN_DIR DATA | --stack NAME --model-name MODEL DATA",
        formatter_class=fmt,
    )
    pr.add_argument("paths", nargs="+", metavar="RUN_DIR DATA", help="training output and data")
    pr.add_argument("--format", choices=["csv", "npy", "npz"])
    pr.add_argument("--out", help="CSV to write (default: standard output)")
    pr.add_argument("--model-name", help="with --stack: the registered model to call")
    _add_stack_flags(pr)
    pr.set_defaults(func=cmd_predict)

    sw = sub.add_parser(
        "sweep",
        help="train a grid of learning rates x batch sizes, keep the best",
        formatter_class=fmt,
    )
    sw.add_argument("data", nargs="?", help="CSV/.npy/.npz file, or s3://bucket/key with --stack")
    sw.add_argument("--config", help="job spec JSON for everything but the grid")
    t = _add_spec_flags(sw, lists=True)
    t.add_argument("--sweep-id", help="sweep id (default: from the data name and time)")
    t.add_argument(
        "--concurrency",
        type=int,
        default=5,
        help="most points training at once (each uses --workers Lambdas)",
    )
    sout = sw.add_argument_group("output")
    sout.add_argument("--out", help="output directory (default runs/SWEEP_ID)")
    sout.add_argument("--quiet", action="store_true", help="no progress messages")
    sout.add_argument("--json", action="store_true", help="print one JSON object: best and results")
    _add_stack_flags(sw)
    _show_spec_defaults(sw)
    sw.set_defaults(func=cmd_sweep, job_id=None)

    mo = sub.add_parser("models", help="the model registry of a stack", formatter_class=fmt)
    msub = mo.add_subparsers(dest="models_command", required=True)
    ml = msub.add_parser("list", help="registered models and the jobs they serve")
    ml.add_argument("--json", action="store_true")
    _add_stack_flags(ml)
    mp = msub.add_parser("promote", help="point a model name at a finished job")
    mp.add_argument("name")
    mp.add_argument("job_id")
    _add_stack_flags(mp)
    mo.set_defaults(func=cmd_models)

    su = sub.add_parser("submit", help="start a job by uploading its spec", formatter_class=fmt)
    su.add_argument("spec", help="job spec JSON (its job_id is ignored: the upload names the job)")
    su.add_argument("--data", help="a local dataset to upload and train on")
    su.add_argument("--follow", action="store_true", help="stream progress until the job ends")
    su.add_argument("--quiet", action="store_true", help="no progress bar")
    su.add_argument("--json", action="store_true", help="print the final status as JSON")
    _add_stack_flags(su)
    su.set_defaults(func=cmd_submit)

    st = sub.add_parser("status", help="a job's progress", formatter_class=fmt)
    st.add_argument("job_id")
    st.add_argument("--follow", action="store_true", help="stream progress until the job ends")
    st.add_argument("--quiet", action="store_true", help="no progress bar")
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    _add_stack_flags(st)
    st.set_defaults(func=cmd_status)
    _add_estimate_parser(sub)
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
