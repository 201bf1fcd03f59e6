"""The ``lambdagrad`` command: train, evaluate, predict.

``train`` runs the real state machine: on the embedded engine by default (no AWS
account needed), or on a deployed stack with ``--stack NAME``. Either way the same
:class:`~lambdagrad.client.StackClient` starts the job and follows its status.

The flags are declared in :mod:`lambdagrad.cli_parser`; this module runs the commands.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import math
import os
import re
import secrets
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from lambdagrad.artifact import (
    ArtifactError,
    NonFiniteError,
    TrainedModel,
    write_directory_atomically,
)
from lambdagrad.cli_parser import STATE_DIRNAME, CliError, build_parser, read_config, spec_from_args
from lambdagrad.client import (
    JobFailedError,
    StackClient,
    StackError,
    dataset_key_name,
    execution_arn,
)
from lambdagrad.cost import CostError
from lambdagrad.data import DataError, check_feature_count, check_label_applies, resolve_format
from lambdagrad.local.mirror import is_held
from lambdagrad.models import ModelError
from lambdagrad.registry import RegistryError, list_models, load_registered, lookup, promote
from lambdagrad.resume import ResumeError
from lambdagrad.spec import JobSpec, SpecError, parse_spec
from lambdagrad.steps import check_dataset_uri, check_sizes, split_and_scaler
from lambdagrad.store import JobKeys, StoreError, is_claim_key
from lambdagrad.sweep import SweepError
from lambdagrad.tabular import read_features, read_labelled
from lambdagrad.training import model_for_data, read_training_data

__all__ = ["main"]

T = TypeVar("T")

USER_ERRORS = (
    SpecError,
    DataError,
    ModelError,
    StoreError,
    ArtifactError,
    JobFailedError,
    StackError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    TimeoutError,
    RegistryError,
    SweepError,
    CostError,
    ResumeError,
)


# ---- job ids --------------------------------------------------------------------------
def _default_job_id(data: str) -> str:
    stem = dataset_key_name(Path(data).stem).replace(".", "-")[:24].strip("-_")
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
        stack.put_file, stack.embedded = engine.put_file, True
        if state_dir is not None:  # messages name the mirror on disk, not a bucket that is gone
            args.local_paths = {
                f"s3://{bucket}/": f"{state_dir / logical_id}/"
                for bucket, logical_id in engine.buckets().items()
            }
        try:
            yield stack
        except KeyboardInterrupt:
            # the engine stops its executions mid-step, and moto's interpreter logs each
            # task it cuts (kilobytes of internals that buried the resume command): quiet
            logging.getLogger("moto").setLevel(logging.CRITICAL + 1)
            raise


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


# ---- output paths ---------------------------------------------------------------------
def _check_out(out: Path, *, directory: bool) -> None:
    """Refuse an --out that cannot be written, before any work: a file where a directory
    must be (the run directory itself, or any folder above it), or a directory where the
    file goes. Found late, each would fail with a traceback or the name of a temp file."""
    if directory and out.exists() and not out.is_dir():
        raise CliError(f"{out} is a file, not a directory; choose another --out")
    if not directory and out.is_dir():
        raise CliError(f"{out} is a directory; --out names the file to write")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CliError(f"{out}: {parent} is a file, not a directory")
            break


def _write_file_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file beside it: a reader never sees half a
    file, and a failure leaves the old file (or none) and no temp file behind. A symlink
    is written through, as a shell's ``>`` would: its target is replaced, the link kept."""
    if path.is_symlink():
        path = path.resolve()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("x") as f:
            f.write(text)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CliError(f"{path}: cannot write it ({exc.strerror or exc})") from None


def _replace_directory(directory: Path, files: dict[str, bytes]) -> None:
    """Make ``directory`` hold exactly ``files`` (paths relative to it, such as best/model.json).

    They are written into a sibling temp directory that then takes its place: a failure
    leaves the old contents whole, and nothing of them (an older best/) stays beside the new.
    """
    directory = Path(os.path.abspath(directory))  # "." has no name to put a sibling beside
    directory.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    new = directory.with_name(f".{directory.name}.{token}.new")
    old = directory.with_name(f".{directory.name}.{token}.old")
    new.mkdir()
    try:
        for name, body in files.items():
            (new / name).parent.mkdir(parents=True, exist_ok=True)
            (new / name).write_bytes(body)
        moved_aside = False
        try:
            if directory.exists():
                directory.rename(old)
                moved_aside = True
            new.rename(directory)
        except BaseException:
            if moved_aside and not directory.exists():
                old.rename(directory)
            raise
    finally:
        shutil.rmtree(new, ignore_errors=True)
        if directory.exists():  # else the old contents are all there is: keep them
            shutil.rmtree(old, ignore_errors=True)


# ---- commands -------------------------------------------------------------------------
def _prepare_data(args: argparse.Namespace, spec: JobSpec) -> Any:
    """Check a local dataset before anything starts: bad data fails in a second, not a deploy
    — and so does a model its labels do not fit (logistic regression on three classes)."""
    path = Path(args.data)
    spec, dataset = read_training_data(path.read_bytes(), source=path.name, spec=spec)
    try:
        model_for_data(spec, dataset)
    except ModelError as exc:
        raise CliError(f"{path.name}: {exc}") from None
    return dataset


def _placeholder_uri(data: str) -> str:
    """A local file's dataset URI until it is uploaded to the stack; the file must exist."""
    if Path(data).is_dir():
        raise CliError(f"{data} is a directory: give a data file (.csv, .npy or .npz)")
    if not Path(data).is_file():
        raise CliError(f"{data}: no such file")
    return "s3://placeholder-bucket/" + dataset_key_name(data)


def _spec_for(args: argparse.Namespace) -> tuple[bool, JobSpec]:
    """The spec from flags and --config, and whether DATA is a local file (which must exist;
    its dataset URI is a placeholder until the file is uploaded to the stack)."""
    local_data = args.data is not None and not args.data.startswith("s3://")
    return local_data, spec_from_args(
        args, _placeholder_uri(args.data) if local_data else args.data
    )


def _spec_and_data(args: argparse.Namespace) -> tuple[bool, JobSpec]:
    """:func:`_spec_for`, with a local file checked (:func:`_prepare_data`) and split and
    scaled as Prepare will (a batch or worker count larger than the training rows, features
    too large to standardize)."""
    local_data, spec = _spec_for(args)
    if local_data:
        split_and_scaler(spec, _prepare_data(args, spec), Path(args.data).name)
    return local_data, spec


def _check_data_reachable(args: argparse.Namespace, local_data: bool, spec: JobSpec) -> None:
    """The embedded engine starts with an empty bucket of its own: an s3:// dataset can only
    be read through --stack. Refused before the engine starts (which would fail the job
    with no such bucket, and leave a run directory whose job id is then taken)."""
    if not args.stack and not local_data:
        raise CliError(
            f"dataset {spec.dataset.uri} is in S3, which the embedded engine (no --stack) "
            f"does not read: give a local data file (lambdagrad {args.command} --config FILE "
            "DATA), or --stack NAME to train in a deployed stack"
        )


def cmd_train(args: argparse.Namespace) -> int:
    if args.chaos is not None:
        from lambdagrad.local.chaos import check_cli_fraction

        try:
            check_cli_fraction(args.chaos, args.stack)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    local_data, spec = _spec_and_data(args)
    _check_data_reachable(args, local_data, spec)
    if spec.output.model_name and not args.stack and not args.quiet:
        print(
            f"note: --model-name registers {spec.output.model_name!r} in a stack's model "
            "registry, which the embedded engine keeps only in the run's state/; the model "
            "itself is in --out (pass --stack NAME to register it where it is served)",
            file=sys.stderr,
        )
    job_id = spec.job_id or _default_job_id(args.data or spec.dataset.uri)
    out = Path(args.out) if args.out else Path("runs") / job_id
    _check_out(out, directory=True)
    replaces = (out / "model.json").exists() and not args.overwrite
    ran = _local_jobs(out) / job_id
    if not args.stack and (ran / "claim.json").is_file():
        # a job id is used once (its claim stays): say so now, not after the engine started;
        # first, so the advice names every flag a new run there needs
        unfinished = not (ran / "model" / "model.json").is_file()
        resumable = unfinished and any((ran / "params").glob("*"))
        again = "--job-id NEW --overwrite" if replaces else "--job-id NEW"
        raise CliError(
            f"job {job_id!r} already ran in {out}/ and a job id is used once: give "
            f"{again} to train again there, or another --out"
            + (f" (or continue it: {_resume_command(job_id, out)})" if resumable else "")
        )
    if replaces:
        raise CliError(f"{out} already holds a model; pass --overwrite or choose another --out")

    started = time.monotonic()
    # a new job: of earlier jobs in this run directory only their claims come back (their
    # ids stay taken); their datasets and checkpoints stay on disk for `resume`
    with open_stack(args, state_dir=out / STATE_DIRNAME, restore=is_claim_key) as stack:
        if not local_data:  # before anything starts, not in Prepare
            check_dataset_uri(spec.dataset.uri, stack.bucket)
        uri = stack.upload_dataset(Path(args.data)) if local_data else spec.dataset.uri
        spec = spec.model_copy(
            update={"job_id": job_id, "dataset": spec.dataset.model_copy(update={"uri": uri})}
        )
        spec = parse_spec(json.loads(spec.model_dump_json()))
        stack.start(spec)
        args.on_interrupt = _interrupt_hint(args, job_id, out)
        if not args.quiet:
            _stderr_console().print(
                f"job [bold]{job_id}[/]: {spec.model.type} / {spec.optimizer.name} "
                f"lr={spec.optimizer.lr} batch={spec.training.batch_size} "
                f"workers={spec.training.workers}"
            )
        status, files, cost = _follow_and_fetch(args, stack, job_id)
    args.on_interrupt = None  # the job has ended: nothing to resume
    return _write_run(args, out, job_id, status, files, cost, started)


def _stack_flags(args: argparse.Namespace) -> str:
    """`` --stack NAME [--region R]`` as given, for a command to run next."""
    return f" --stack {args.stack}" + (f" --region {args.region}" if args.region else "")


def _interrupt_hint(args: argparse.Namespace, job_id: str, out: Path) -> str:
    """What to do after Ctrl-C while following a job: a local job stops with this process and
    resumes from its run directory; a job on a stack goes on without us."""
    if args.stack:
        return (
            f"job {job_id} goes on in stack {args.stack}: "
            f"lambdagrad status {job_id}{_stack_flags(args)} --follow"
        )
    template = f" --template {args.template}" if args.template else ""
    return f"job {job_id} stopped; continue it with: {_resume_command(job_id, out)}{template}"


def _resume_command(job_id: str, out: Path) -> str:
    """``lambdagrad resume`` for a local job, with ``--overwrite`` when ``out`` holds another
    job's model (a ``train --overwrite`` that did not finish)."""
    command = f"lambdagrad resume {job_id} --out {out}"
    model = out / "model.json"
    if model.is_file():
        with contextlib.suppress(CliError):
            if _read_json(model).get("job_id") != job_id:
                command += " --overwrite"
    return command


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

    try:
        files["loss.png"] = loss_curve_png(files["history.csv"], title=f"{job_id}")
    except Exception as exc:  # a picture must not cost the user the model
        _stderr_console().print(f"[yellow]warning:[/] no loss.png: drawing it failed ({exc})")
    write_directory_atomically(out, files)
    summary = {
        "job_id": job_id,
        "out": str(out),
        "rounds": status.get("round"),
        "model_round": status.get("model_round"),
        "stopped": status.get("stopped"),
        "seconds": round(seconds, 2),
    }
    summary.update(status.get("metrics") or {})
    summary["aws_dollars"] = cost["dollars"] if cost else None
    info = json.loads(files["model.json"])
    spec = info.get("spec") or {}
    lr = (info.get("optimizer_in_force") or {}).get("learning_rate")
    full = (spec.get("training") or {}).get("batch_size") == "full"
    rose = _loss_rose(files["history.csv"], lr, full)
    summary["warnings"] = [rose] if rose else []
    chaos = getattr(args, "chaos_run", None)
    if chaos is not None:
        summary["chaos"] = {**chaos.counts, "invocations": chaos.invocations, "survived": True}
    if args.json:
        print(json.dumps(summary))
    else:
        _print_train_summary(summary, spec.get("training") or {})
        if rose:
            _stderr_console().print(f"[yellow]warning:[/] {rose}")
        if cost:
            print(_cost_line(cost))
        if chaos is not None:
            print(f"{chaos.summary()}; all retried, the job survived")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue a killed, failed or stopped job from its last complete checkpoint."""
    out = Path(args.out) if args.out else Path("runs") / args.job_id
    _check_out(out, directory=True)
    state_dir = None
    if not args.stack:
        state_dir = out / STATE_DIRNAME
        if not (_local_jobs(out) / args.job_id).is_dir():
            jobs = sorted(p.name for p in _local_jobs(out).glob("*") if p.name != "incoming")
            raise CliError(
                f"no local checkpoints of job {args.job_id} in {state_dir}/"
                + (f" (it holds job{'s' * (len(jobs) > 1)} {', '.join(jobs)})" if jobs else "")
                + ": give the --out it was trained with, or --stack NAME for a job on a "
                "deployed stack"
            )
    if (out / "model.json").is_file():
        owner = _read_json(out / "model.json").get("job_id")
        if owner == args.job_id:
            raise ResumeError(f"job {args.job_id!r} already finished: its model is in {out}/")
        if not args.overwrite:
            raise CliError(
                f"{out} holds the model of job {owner!r}; pass --overwrite to replace it "
                "(as the train that started this job asked) or choose another --out"
            )
    started = time.monotonic()
    with open_stack(args, state_dir=state_dir) as stack:
        start = stack.resume(args.job_id)
        args.on_interrupt = _interrupt_hint(args, args.job_id, out)
        if not args.quiet:
            _stderr_console().print(
                f"job [bold]{args.job_id}[/]: resumed from round {start['round']}"
            )
        status, files, cost = _follow_and_fetch(args, stack, args.job_id)
    args.on_interrupt = None  # the job has ended: nothing to resume
    return _write_run(args, out, args.job_id, status, files, cost, started)


#: How a job that ended before its rounds says why (model.json's ``stopped``), given its
#: spec's training section.
_STOPPED_EARLY = {
    "early_stopping": "stopped early: no validation gain in {patience} rounds (--patience)",
    "tolerance": "stopped: the training loss changed by less than {tolerance} (--tolerance)",
}


def _why_stopped(summary: dict[str, Any], training: dict[str, Any]) -> str:
    """`` (stopped early: ...; the model is round 2)`` when the job ended before its rounds,
    or kept an earlier round than its last; the losses printed are of the model's round."""
    why = _STOPPED_EARLY.get(summary.get("stopped") or "")
    why = why.format_map(defaultdict(str, training)) if why else why
    kept = summary.get("model_round")
    if kept is not None and kept != summary.get("rounds"):
        why = f"{why}; " if why else ""
        return f" ({why}the model is round {kept}, the best on validation)"
    return f" ({why})" if why else ""


#: How much the training loss may grow, start to end, before the summary calls it diverged.
LOSS_ROSE_FACTOR = 1000.0


def _loss_rose(history_csv: bytes, learning_rate: Any, full_batch: bool) -> str | None:
    """A warning when the loss ended far above where it started: the job diverged without
    overflowing (a job whose loss overflows fails with ModelDiverged), yet it succeeded, and
    a user reading only "done" would take the model. The validation loss (all the held-out
    rows) when there is one; else the training loss, exact for full batches, and for
    mini-batches the means of the first and last tenth of the rounds (at least 10 rounds):
    one heavy-tailed batch is not a divergence."""
    rows = list(csv.DictReader(io.StringIO(history_csv.decode())))
    validation = [float(r["validation_loss"]) for r in rows if r.get("validation_loss")]
    which, losses, k = "validation", validation, 1
    if not validation:
        which, losses = "training", [float(r["train_loss"]) for r in rows if r.get("train_loss")]
        k = 1 if full_batch else min(20, len(losses) // 10)
    if len(losses) < 2 or k < 1:
        return None
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    if not (first > 0 and math.isfinite(last) and last > LOSS_ROSE_FACTOR * first):
        return None
    lr = f" (now {learning_rate:g})" if isinstance(learning_rate, int | float) else ""
    return (
        f"the {which} loss rose from {first:.4g} to {last:.4g} (history.csv): the job "
        f"diverged; try a smaller learning rate{lr}, gradient clipping (--clip-norm) or a "
        "larger batch"
    )


def _counted(n: int, noun: str) -> str:
    """``1 round``, ``3 rounds``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _print_train_summary(summary: dict[str, Any], training: dict[str, Any]) -> None:
    val = summary.get("validation") or {}
    parts = [f"{k} {v:.4g}" for k, v in val.items() if k != "rows" and isinstance(v, float)]
    train_loss = summary.get("train_loss")
    val_loss = summary.get("validation_loss")
    why = _why_stopped(summary, training)
    print(
        f"done: {_counted(summary['rounds'], 'round')} in {summary['seconds']} s{why}; "
        f"train loss {train_loss:.4g}"
        + (f", validation loss {val_loss:.4g}" if val_loss is not None else "")
        + (f" ({', '.join(parts)})" if parts else "")
        + f"\nmodel written to {summary['out']}/ (model.npz, model.json, history.csv, loss.png)"
    )


@contextlib.contextmanager
def _scoring(path: Path) -> Iterator[None]:
    """A row the model cannot score is named with its file (the row is 1-based, after the
    header)."""
    try:
        yield
    except NonFiniteError as exc:
        raise CliError(f"{path.name}: {exc}") from None


def _load_run(run: str) -> TrainedModel:
    """A run directory's model; one whose job has not finished says what became of it."""
    directory = Path(run)
    if (directory / "result.json").is_file() and not (directory / "model.json").exists():
        best = directory / "best"
        raise CliError(
            f"{directory} is a sweep's output: "
            + (
                f"its best model is {best}"
                if (best / "model.json").is_file()
                else "no point succeeded"
            )
        )
    jobs = _local_jobs(directory)
    if not (directory / "model.json").exists() and jobs.is_dir():
        ids = sorted(p.name for p in jobs.iterdir() if (p / "status.json").is_file())
        if len(ids) != 1:
            raise CliError(
                f"{directory} has no model yet: its jobs ({', '.join(ids) or 'none'}) did "
                f"not finish; `lambdagrad status JOB_ID --out {directory}` tells each one's state"
            )
        job, status, held = ids[0], {}, None
        with contextlib.suppress(CliError):
            status, held = _recorded_status(directory, job)
        if status.get("state") == "FAILED":
            raise CliError(
                f"{directory} has no model: its job ({job}) failed: "
                f"{status.get('error')}: {status.get('message', '')}".splitlines()[0]
            )
        if held:
            raise CliError(f"{directory} has no model yet: its job ({job}) is still running")
        if status.get("state") == "SUCCEEDED":  # its model files were moved or deleted
            copy = jobs / job / "model"
            where = (
                f"its job's copy is in {copy}"
                if (copy / "model.json").is_file()
                else "train it again"
            )
            raise CliError(
                f"{directory} has no model.json, though its job ({job}) finished: the model "
                f"files were removed; {where}"
            )
        raise CliError(
            f"{directory} has no model yet: its job ({job}) did not finish; continue it "
            f"with: {_resume_command(job, directory)}"
        )
    trained = TrainedModel.load(directory)
    _warn_of_a_later_unfinished_job(directory, trained.info.get("job_id"))
    return trained


def _warn_of_a_later_unfinished_job(directory: Path, model_job: str | None) -> None:
    """An interrupted ``train --overwrite`` leaves the old model in place (as it should), but
    the user asked for a new one: say whose model this is, and how to finish the new one."""
    jobs = _local_jobs(directory)
    if not jobs.is_dir():
        return

    def claimed(job: str) -> float:
        with contextlib.suppress(CliError, TypeError, ValueError):
            return float(_read_json(jobs / job / "claim.json").get("claimed_at"))
        return -math.inf

    since = claimed(model_job) if model_job else -math.inf
    for job in sorted(p.name for p in jobs.iterdir() if (p / "status.json").is_file()):
        if job == model_job or claimed(job) <= since:
            continue
        with contextlib.suppress(CliError):
            status, held = _recorded_status(directory, job)
            if status.get("state") not in ("RUNNING", "STOPPED"):
                continue
            later = (
                f"is still training here (round {status.get('round')})"
                if held
                else f"stopped at round {status.get('round')}; continue it with: "
                f"{_resume_command(job, directory)}"
            )
            _stderr_console().print(
                f"[yellow]warning:[/] {directory}/model.json is job {model_job}'s; job {job}, "
                f"started here after it, {later}"
            )


def cmd_evaluate(args: argparse.Namespace) -> int:
    trained = _load_run(args.run)
    path = Path(args.data)
    label = args.label or trained.label
    named = False
    if label is None and resolve_format(path.name, args.format) == "csv":
        label, named = trained.csv_label, True  # the column trained on, found by its name
    check_label_applies(path.name, args.format, args.label, "--label")
    try:
        X, y = read_labelled(
            path.read_bytes(), source=path.name, fmt=args.format, label=label, trained=trained
        )
    except DataError as exc:
        if named and f"no label column {label!r}" in str(exc):
            hint = "the label column in training; name this file's with --label"
            raise DataError(f"{exc} ({hint})") from None
        raise
    with _scoring(path):
        metrics = trained.evaluate(X, y)
    if args.json:  # inf and nan are not JSON: null
        finite = {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in metrics.items()
        }
        print(json.dumps(finite, allow_nan=False))
    else:
        for name, value in metrics.items():
            print(
                f"{name:>10}  {value:.6g}" if isinstance(value, float) else f"{name:>10}  {value}"
            )
    return 0


def _predictions_csv(
    predictions: list[Any], out: str | None, proba: tuple[list[Any], list[list[float]]] | None
) -> None:
    """One row per input row: the prediction, and with ``proba`` (classes, probabilities)
    a ``p_<class>`` column per class."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if proba is None:
        writer.writerow(["prediction"])
        writer.writerows([p] for p in predictions)
    else:
        classes, probabilities = proba
        writer.writerow(["prediction", *(f"p_{c}" for c in classes)])
        writer.writerows([p, *row] for p, row in zip(predictions, probabilities, strict=True))
    if out:
        path = Path(out)
        _write_file_atomically(path, buf.getvalue())
        print(f"{len(predictions)} predictions written to {path}", file=sys.stderr)
    else:
        sys.stdout.write(buf.getvalue())


PREDICT_CHUNK_ROWS = 1000
#: Most request bytes a chunk may take: a synchronous Lambda invoke carries at most 6 MB.
PREDICT_CHUNK_BYTES = 5_000_000


def _predict_chunk(max_rows: int, first: list[Any]) -> int:
    """Rows per predict request: the stack's limit, and fewer for wide rows, whose JSON
    (about 20 bytes a number) would pass Lambda's 6 MB request limit."""
    row_bytes = len(json.dumps(first)) + 2 if first else 1
    return max(1, min(max_rows, PREDICT_CHUNK_BYTES // (2 * row_bytes)))


def _rows_of_file(message: str, name: str, start: int) -> str:
    """A predict request's error about ``instances[i]`` as the file's data row."""
    return re.sub(
        r"instances\[(\d+)\]", lambda m: f"{name}: data row {start + int(m.group(1)) + 1}", message
    )


#: What train writes into a run directory (and its state/): never a predict --out.
RUN_FILES = frozenset({"model.json", "model.npz", "history.csv", "loss.png", "cost.json"})


def _is_run_file(out: Path, run: Path) -> bool:
    """Whether ``out`` is a file of the run directory ``run`` (a model file, or its state)."""
    there, run = out.resolve(), run.resolve()
    return (there.parent == run and there.name in RUN_FILES) or (run / STATE_DIRNAME) in [
        there,
        *there.parents,
    ]


def cmd_predict(args: argparse.Namespace) -> int:
    if args.out:
        _check_out(Path(args.out), directory=False)
        data = Path(args.paths[-1]) if args.paths else Path()
        # the same file through another path or a link too
        if data.is_file() and Path(args.out).is_file() and os.path.samefile(args.out, data):
            raise CliError(f"--out {args.out} is the data file: the predictions would replace it")
        run = Path(args.paths[0]) if len(args.paths) == 2 and not args.stack else None
        if run and run.is_dir() and _is_run_file(Path(args.out), run):
            raise CliError(
                f"--out {args.out} is one of the run directory's own files, which the "
                "predictions would replace: name a new file (e.g. predictions.csv)"
            )
    if args.stack:
        if not args.model_name or len(args.paths) != 1:
            raise CliError("with --stack: lambdagrad predict --stack NAME --model-name MODEL DATA")
        path = Path(args.paths[0])
        with open_stack(args) as stack:
            pointer = lookup(stack.store, args.model_name)
            trained = load_registered(stack.store, pointer)
            _check_proba(args, trained)
            X = read_features(path.read_bytes(), source=path.name, fmt=args.format, trained=trained)
            predictions: list[Any] = []
            probabilities: list[list[float]] = []
            chunk = _predict_chunk(
                int(stack.outputs.get("PredictMaxRows", PREDICT_CHUNK_ROWS)), X[:1].tolist()
            )
            for start in range(0, len(X), chunk):
                try:
                    answer = stack.predict(args.model_name, X[start : start + chunk].tolist())
                except StackError as exc:  # its rows are the chunk's: name the file's
                    raise CliError(_rows_of_file(str(exc), path.name, start)) from None
                _same_model(answer, pointer, args.model_name, start)
                predictions += answer["predictions"]
                probabilities += answer.get("probabilities") or []
        proba = (trained.class_labels, probabilities) if args.proba else None
        _predictions_csv(predictions, args.out, proba)
        return 0
    if len(args.paths) != 2:
        raise CliError("lambdagrad predict RUN_DIR DATA (or --stack NAME --model-name MODEL DATA)")
    run, data = args.paths
    trained = _load_run(run)
    _check_proba(args, trained)
    path = Path(data)
    X = read_features(path.read_bytes(), source=path.name, fmt=args.format, trained=trained)
    with _scoring(path):
        predictions, out = trained.predict_with_proba(X)
    proba = (trained.class_labels, out.tolist()) if args.proba and out is not None else None
    _predictions_csv(predictions, args.out, proba)
    return 0


def _same_model(answer: dict[str, Any], pointer: dict[str, Any], name: str, row: int) -> None:
    """The file's columns were put in the order of the model the name pointed at when
    predict began; a model promoted under the name since would score them out of order."""
    served = answer.get("model") or {}
    if served.get("version") != pointer["version"] or served.get("job_id") != pointer["job_id"]:
        raise CliError(
            f"model {name!r} was promoted to job {served.get('job_id')} while predicting (from "
            f"row {row + 1} of the file; it was job {pointer['job_id']}): nothing was written, "
            "run predict again"
        )


def _check_proba(args: argparse.Namespace, trained: TrainedModel) -> None:
    if args.proba and not trained.is_classifier:
        raise CliError("--proba: the model is a regression; probabilities are a classifier's")


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


#: How long ``status --follow`` waits for a job with no record at all before giving up.
NO_RECORD_SECONDS = 300.0


def _follow_with_progress(
    stack: StackClient, job_id: str, quiet: bool, give_up: str | None = None
) -> dict[str, Any]:
    """Follow a job with a progress bar; with ``give_up`` (a message), stop with it when the
    job has left no record at all for :data:`NO_RECORD_SECONDS` (no such job, most likely)."""
    since = time.monotonic()

    def update(status: dict[str, Any]) -> None:
        nonlocal since
        if give_up and _no_record(status) and time.monotonic() - since > NO_RECORD_SECONDS:
            if not _may_still_start(stack, job_id):
                raise CliError(give_up)
            since = time.monotonic()  # a sweep point waiting for its turn: wait on
        progress.update(status)

    with Progress(enabled=not quiet) as progress:
        return stack.follow(job_id, on_status=update)


def _may_still_start(stack: StackClient, job_id: str) -> bool:
    """Whether a job with no record may yet start: it has a running execution, or it is a
    point (``<sweep>-pNNN``) of a sweep that is still running (points queue for a slot)."""
    if stack.running_executions(job_id):
        return True
    point = re.match(r"^(.+)-p\d{3}$", job_id)
    arn = stack.outputs.get("SweepStateMachineArn")
    if not point or not arn:
        return False
    sweep = execution_arn(arn, point.group(1))
    try:
        return stack.sfn.describe_execution(executionArn=sweep)["status"] == "RUNNING"
    except Exception:  # no such sweep (or not allowed to look): nothing to wait for
        return False


def _no_record(status: dict[str, Any]) -> bool:
    """The status a stack gives a job it has no record of (see StackClient.status)."""
    return status == {"job_id": status.get("job_id"), "state": "PENDING"}


def cmd_submit(args: argparse.Namespace) -> int:
    doc = read_config(args.spec)
    doc.pop("job_id", None)  # the upload's key and ETag name the job
    if args.data:
        doc.setdefault("dataset", {})["uri"] = _placeholder_uri(args.data)
    parse_spec({**doc, "job_id": "check"})  # a bad spec fails here, before any upload
    if not args.stack and not args.data:
        raise CliError(
            "without --stack the job runs on an embedded engine whose bucket starts empty: "
            "give --data FILE (it is uploaded), or --stack NAME for a deployed stack"
        )
    if not args.stack and not args.quiet:
        print(
            "note: without --stack the job runs on an embedded engine that ends with this "
            "command, and its model is not kept; `lambdagrad train --config SPEC DATA` keeps it",
            file=sys.stderr,
        )
    with open_stack(args) as stack:
        if args.data:
            doc["dataset"]["uri"] = stack.upload_dataset(Path(args.data))
        else:  # before the spec is uploaded (which starts the job), not in Prepare
            check_dataset_uri(str((doc.get("dataset") or {}).get("uri")), stack.bucket)
        # ASCII only (an event's key and the CLI's must be one string), and unique: the same
        # file submitted twice in a second is two jobs, not one key overwritten
        stem = "".join(
            c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in Path(args.spec).stem
        )
        name = f"{stem[:24]}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        job_id = stack.submit(doc, name)
        print(job_id)
        if args.follow or not args.stack:  # the embedded engine ends with this process
            status = _follow_with_progress(stack, job_id, args.quiet)
            print(json.dumps(status) if args.json else f"{job_id}: {status['state']}")
    return 0


#: template.yaml's bucket: the folder of ``state/`` that mirrors it for a local run
DATA_BUCKET_ID = "DataBucket"


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file, or a CliError naming the file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CliError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise CliError(f"{path} is not a JSON object")
    return doc


def _local_jobs(out: Path) -> Path:
    """The folder of a run directory's mirrored bucket that holds its jobs' records."""
    return out / STATE_DIRNAME / DATA_BUCKET_ID / "jobs"


def _at_last_checkpoint(out: Path, status: dict[str, Any]) -> dict[str, Any]:
    """``status`` moved to the job's last committed round on disk (the steps' own rule: its
    params, optimizer state and metrics record, the commit mark), with that round's losses:
    status.json is written at most once a second, so a stopped job's may lag by rounds."""
    from lambdagrad.local.mirror import MirrorS3
    from lambdagrad.steps import committed_record, last_complete_round
    from lambdagrad.store import JobKeys, Store

    job_id, recorded = str(status.get("job_id")), status.get("round")
    store = Store(MirrorS3(out / STATE_DIRNAME / DATA_BUCKET_ID), "mirror")
    keys = JobKeys(job_id)
    with contextlib.suppress(Exception):  # a damaged record: keep status.json's round
        last = last_complete_round(store, keys)
        record = committed_record(store, keys, last) if last else None
        if record is not None and isinstance(recorded, int) and last > recorded:
            return {
                **status,
                "round": last,
                "train_loss": record.get("train_loss"),
                "validation_loss": record.get("validation_loss"),
            }
    return status


def _recorded_status(out: Path, job_id: str) -> tuple[dict[str, Any], bool | None]:
    """A local job's ``status.json``, and whether a process holds the run directory (asked
    only of a RUNNING job; None: cannot be told). The engine ends with the process that ran
    it, so a RUNNING job that nobody holds is reported STOPPED, with the resume command."""
    status = _read_json(_local_jobs(out) / job_id / "status.json")
    if status.get("state") != "RUNNING":
        return status, None
    held = is_held(out / STATE_DIRNAME)
    if held is False:
        status = {
            **_at_last_checkpoint(out, {**status, "job_id": job_id}),
            "state": "STOPPED",
            "error": "Stopped",
            "message": "the process running it ended before the job did (killed or "
            f"interrupted); continue it with: {_resume_command(job_id, out)}",
        }
    return status, held


def _local_status(
    args: argparse.Namespace,
) -> tuple[dict[str, Any], dict[str, Any] | None, Path]:
    """A local job's status and cost, from the records its run directory mirrors (``state/``),
    and the folder of those records: the embedded engine lives only as long as the command
    that ran the job."""
    if args.follow:
        raise CliError("--follow needs --stack: a local job shows its progress where it runs")
    out = Path(args.out) if args.out else Path("runs") / args.job_id
    records = _local_jobs(out) / args.job_id
    if not (records / "status.json").is_file():
        raise CliError(
            f"no local records of job {args.job_id} in {records}/: give the --out it was "
            "trained with, or --stack NAME for a job on a deployed stack (a job submitted "
            "without --stack ran inside that submit command and kept no records)"
        )
    status, _ = _recorded_status(out, args.job_id)
    done = status.get("state") == "SUCCEEDED" and (records / "cost.json").is_file()
    return status, _read_json(records / "cost.json") if done else None, records


def cmd_status(args: argparse.Namespace) -> int:
    JobKeys(args.job_id)  # an invalid id is named (and never a path: runs/../x)
    if not args.stack:
        status, cost, folder = _local_status(args)
        records = f"{folder}/"
    else:
        with open_stack(args) as stack:
            unknown = (
                f"nothing is recorded for job {args.job_id} in stack {args.stack}: a job "
                "submitted moments ago (its record appears when Prepare runs), or no such job"
            )
            if args.follow:
                give_up = f"{unknown}; gave up after {NO_RECORD_SECONDS:.0f} s"
                status = _follow_with_progress(stack, args.job_id, args.quiet, give_up)
            else:
                resume = f"lambdagrad resume {args.job_id}{_stack_flags(args)}"
                status = stack.as_executed(stack.status(args.job_id), resume)
                if _no_record(status) and not args.json:
                    print(f"note: {unknown}", file=sys.stderr)
            cost = _job_cost(stack, args.job_id) if status.get("state") == "SUCCEEDED" else None
            records = f"s3://{stack.store.bucket}/{JobKeys(args.job_id).prefix}"
    if args.json:  # the records as they are
        print(json.dumps({**status, "cost": cost} if cost else status))
    else:  # both rendered before anything is printed: a damaged record is named, not half shown
        line = _readable(lambda: _status_line(args.job_id, status), records + "status.json")
        bill = _readable(lambda: _cost_text(cost), records + "cost.json") if cost else ""
        print(line)
        print(bill, end="")
    return 0 if status.get("state") not in ("FAILED", "STOPPED") else 1


def _status_line(job_id: str, status: dict[str, Any]) -> str:
    if not isinstance(status["state"], str):
        raise TypeError(f"state is {status['state']!r}, not a name")
    line = f"{job_id}: {status['state']}"
    if status.get("rounds"):
        line += f", round {int(status.get('round') or 0)}/{int(status['rounds'])}"
    if status.get("train_loss") is not None:
        line += f", train loss {float(status['train_loss']):.4g}"
    if status.get("error"):
        line += f"\n{status['error']}: {status.get('message', '')}"
    return line


def _cost_text(cost: dict[str, Any]) -> str:
    """The cost table and its line, rendered whole before anything is printed."""
    from rich.console import Console

    from lambdagrad.cost_report import print_cost

    text = io.StringIO()
    print_cost(cost, Console(file=text, width=Console().width), notes=False)
    return text.getvalue() + _cost_line(cost) + "\n"


def _readable(show: Callable[[], T], record: str) -> T:
    """What ``show`` makes of a job record, or a CliError naming the record and what in it
    is damaged (a hand-edited ``status.json`` or ``cost.json``)."""
    try:
        return show()
    except KeyError as exc:
        raise CliError(f"{record} is damaged: it has no {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise CliError(f"{record} is damaged: {exc}") from None


#: What a sweep writes into its --out (all that --overwrite may replace).
SWEEP_OUTPUTS = frozenset({"result.json", "curves.png", "heatmap.png", "best"})


def _check_sweep_out(out: Path, *, overwrite: bool) -> None:
    """A sweep replaces its whole --out (no older best/ may stay beside a new result.json):
    an --out with files in it needs --overwrite, and holds an earlier sweep's result.json."""
    _check_out(out, directory=True)
    if out.is_dir():
        here, there = Path.cwd().resolve(), out.resolve()
        if here == there or there in here.parents:  # the swap would leave the shell in a husk
            raise CliError(
                f"{out} holds the current directory, and a sweep replaces its --out whole: "
                "choose a directory of its own (e.g. runs/NAME)"
            )
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise CliError(
            f"{out} already holds files; pass --overwrite to replace them all "
            "or choose another --out"
        )
    if not (out / "result.json").is_file():
        raise CliError(
            f"{out} holds files but no sweep's result.json; --overwrite replaces only "
            "a sweep's output: choose another --out"
        )
    others = sorted(p.name for p in out.iterdir() if p.name not in SWEEP_OUTPUTS)
    if others:
        raise CliError(
            f"{out} holds {', '.join(others[:3])}{' ...' if len(others) > 3 else ''}, which no "
            "sweep wrote, and --overwrite would delete it: move it or choose another --out"
        )


def cmd_sweep(args: argparse.Namespace) -> int:
    from lambdagrad import sweep_report
    from lambdagrad.plot import loss_curve_png
    from lambdagrad.sweep import describe_point, expand_grid, result_key, sweep_input

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
    local_data, spec = _spec_for(args)
    if spec.output.model_name:
        raise CliError(
            f"output.model_name: a sweep trains one model per point, and each would take the "
            f"name {spec.output.model_name!r} in turn; leave it out and, after the sweep, point "
            "the name at the best point's job: lambdagrad models promote NAME JOB_ID"
        )
    base = json.loads(spec.model_dump_json())
    base.pop("job_id", None)
    points = expand_grid(base, grid)
    if local_data:  # every point as train checks its job: none is started to fail in Prepare
        sized = {
            describe_point(i, pt["params"]): parse_spec(pt["spec"]) for i, pt in enumerate(points)
        }
        split_and_scaler(spec, _prepare_data(args, spec), Path(args.data).name, sized=sized)
    _check_data_reachable(args, local_data, spec)
    sweep_id = args.sweep_id or _default_job_id(args.data or spec.dataset.uri)[:50]
    out = Path(args.out) if args.out else Path("runs") / sweep_id
    _check_sweep_out(out, overwrite=args.overwrite)
    with open_stack(args) as stack:
        if not local_data:  # before anything starts, not in each point's Prepare
            check_dataset_uri(spec.dataset.uri, stack.bucket)
        uri = stack.upload_dataset(Path(args.data)) if local_data else spec.dataset.uri
        for point in points:
            point["spec"]["dataset"]["uri"] = uri
        arn = stack.start_sweep(sweep_input(sweep_id, points, args.concurrency))
        if args.stack:
            args.on_interrupt = (
                f"sweep {sweep_id} goes on in stack {args.stack} (execution "
                f"{arn.rsplit(':', 1)[-1]}); its result will be s3://{stack.bucket}/"
                f"{result_key(sweep_id)}, and each point's status: lambdagrad status "
                f"{sweep_id}-p000{_stack_flags(args)}"
            )
        if not args.quiet and not args.json:
            limit = args.concurrency < len(points)
            _stderr_console().print(
                f"sweep [bold]{sweep_id}[/]: {_counted(len(points), 'point')}"
                + (f", at most {args.concurrency} at once" if limit else "")
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
    if best_files:
        best_files["loss.png"] = loss_curve_png(best_files["history.csv"], title=best["job_id"])
        files.update({f"best/{name}": body for name, body in best_files.items()})
    # a sweep with no model does not replace an earlier sweep's (nothing good is lost)
    keep = not best_files and (out / "result.json").is_file()
    if not keep:  # one swap for all: a best/ in `out` is always the one result.json names
        _replace_directory(out, files)
    if args.json:
        print(json.dumps(sweep_report.summary_json(result)))
    else:
        print(sweep_report.table(result))
    if not best_files:
        failed = next((p for p in result.get("results", []) if p.get("message")), None)
        first = f"{failed['error']}: {failed['message']}" if failed else "in the table above"
        where = (
            f"{out} keeps the earlier sweep; the first point's error: {first}".splitlines()[0]
            if keep
            else f"each point's error is in {out / 'result.json'}"
        )
        raise SweepError(
            f"no point of sweep {sweep_id} succeeded ({sweep_report.tally(result)}); {where}"
        )
    if not args.json:
        print(
            f"results in {out}/ (result.json, curves.png{', heatmap.png' if len(grid) == 2 else ''}"
            ", best/)"
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
        f"({_counted(cost['rounds'], 'round')}, prices of {cost['prices']['as_of']})"
    )


def _template_settings(args: argparse.Namespace) -> tuple[Any, dict[str, float], str]:
    """What the bill depends on in the template: each function's memory, SegmentSeconds
    and RoundFunctionTimeout (their defaults), and where they came from (without a
    template, the defaults of this version's)."""
    from lambdagrad.cost import (
        DEFAULT_ROUND_FUNCTION_TIMEOUT,
        DEFAULT_SEGMENT_SECONDS,
        FunctionMemory,
        template_parameter,
    )
    from lambdagrad.local.sam import TemplateError, load_template

    template: dict[str, Any] = {}
    try:
        path = Path(args.template) if args.template else find_template()
    except CliError:
        path = None
    if path is not None:
        try:
            template = load_template(path)
        except TemplateError as exc:
            raise CliError(f"--template: {exc}") from None
    limits = {
        "segment_seconds": template_parameter(template, "SegmentSeconds", DEFAULT_SEGMENT_SECONDS),
        "round_function_timeout": template_parameter(
            template, "RoundFunctionTimeout", DEFAULT_ROUND_FUNCTION_TIMEOUT
        ),
    }
    if path is None:
        return FunctionMemory(), limits, "default (no template.yaml found)"
    return FunctionMemory.from_template(template), limits, str(path)


def cmd_estimate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from lambdagrad.cost import DEFAULT_DURATIONS, JobShape, estimate, price_overrides
    from lambdagrad.cost_report import print_cost
    from lambdagrad.pricing import DEFAULT_PRICES

    prices = price_overrides(DEFAULT_PRICES, args.price or [])
    local_data, spec = _spec_for(args)
    rows, features, classes = args.rows, args.features, args.classes
    regression = spec.model.task == "regression"
    if local_data:
        data = _prepare_data(args, spec)
        rows = rows or len(data.y)  # flags are at least 1 (cli_parser._count)
        features = features or data.X.shape[1]
        classes = classes or len(data.classes or [])
        regression = data.classes is None  # an mlp's task: auto, decided from the labels
    elif rows is None or features is None:
        raise CliError(
            f"{spec.dataset.uri} is not a local file: give its size with --rows N --features D"
        )
    if regression or spec.model.type == "linear":
        classes = 1
    elif not classes:
        classes = 2
    if args.memory is not None and not 128 <= args.memory <= 10_240:
        raise CliError(f"--memory: {args.memory} MB (Lambda allows 128 to 10240)")
    if args.s3_latency is not None and not 0 <= args.s3_latency < math.inf:
        raise CliError(f"--s3-latency: {args.s3_latency} (seconds, at least 0)")
    memory, limits, memory_from = _template_settings(args)
    if args.memory:
        memory, memory_from = replace(memory, worker=args.memory), f"--memory, {memory_from}"
    durations = DEFAULT_DURATIONS
    if args.s3_latency is not None:
        durations = replace(durations, s3_request_s=args.s3_latency)
    shape = JobShape.from_spec(spec, rows, features, classes)
    check_sizes(spec, shape.rows)  # the job train would refuse is not priced either
    source = Path(args.data).name if local_data else spec.dataset.uri
    check_feature_count(features, source, spec.dataset.max_features)  # as Prepare would
    bill = estimate(
        shape,
        orchestration=args.orchestration,
        inline_gradients=args.inline_gradients,  # None: as the workers decide
        memory_mb=memory,
        durations=durations,
        prices=prices,
        **limits,
    ).to_json()
    bill["details"]["memory_from"] = memory_from
    if args.json:
        print(json.dumps(bill))
    else:
        print_cost(bill)
    return 0


# ---- main -----------------------------------------------------------------------------
#: Each command's name, as the parser records it in ``args.command``, and what runs it.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": cmd_train,
    "resume": cmd_resume,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "sweep": cmd_sweep,
    "models": cmd_models,
    "submit": cmd_submit,
    "status": cmd_status,
    "estimate": cmd_estimate,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "predict" and not any(arg.startswith("-") for arg in extra):
        args.paths += extra  # `predict RUN --out X DATA`: argparse ends a list at a flag
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(COMMANDS[args.command](args) or 0)
    except (CliError, *USER_ERRORS) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if (
            isinstance(
                exc, FileNotFoundError | IsADirectoryError | NotADirectoryError | PermissionError
            )
            and exc.filename
        ):
            message = f"{exc.filename}: {exc.strerror.lower() if exc.strerror else 'not found'}"
        for uri, path in getattr(args, "local_paths", {}).items():
            message = message.replace(uri, path)
        print(f"error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = getattr(args, "on_interrupt", None)
        print(f"interrupted: {hint}" if hint else "interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
