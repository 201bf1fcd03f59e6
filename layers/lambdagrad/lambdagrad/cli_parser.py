"""The ``lambdagrad`` command's flags: the argument parser, and the job spec built from them.

Kept apart from :mod:`lambdagrad.cli`, which runs the commands, so that each module has one job:
the parser names the command asked for in ``args.command``, and ``cli`` picks what runs it.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lambdagrad import __version__
from lambdagrad.cost import RUNNING_ORCHESTRATION
from lambdagrad.spec import DEFAULT_LEARNING_RATE, MAX_SPEC_BYTES, JobSpec, SpecError, parse_spec
from lambdagrad.sweep import MAX_CONCURRENCY
from lambdagrad.user_numbers import parse_float, parse_int

__all__ = ["STATE_DIRNAME", "CliError", "build_parser", "read_config", "spec_from_args"]

#: Where the embedded engine keeps a job's bucket on disk, inside the run directory.
STATE_DIRNAME = "state"

#: The spec's groups of fields (dataset, model, ...): each a JSON object in a spec file.
SPEC_SECTIONS = tuple(
    name
    for name, field in JobSpec.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
)


class CliError(RuntimeError):
    """A usage problem found after argument parsing (bad combination, unreadable file)."""


# ---- spec from flags ------------------------------------------------------------------
# flag destination -> (spec group, field)
SPEC_FLAGS: dict[str, tuple[str, str]] = {
    "label": ("dataset", "label"),
    "exclude": ("dataset", "exclude"),
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


def number(text: str) -> float:
    """A flag's float (``1_0`` refused: :mod:`lambdagrad.user_numbers`)."""
    try:
        return parse_float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def whole_number(text: str) -> int:
    """A flag's int (``1_0`` refused, as by :func:`number`)."""
    try:
        return parse_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _count(text: str) -> int:
    """A size (rows, features, classes, points at once): a whole number of at least 1."""
    try:
        value = parse_int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _concurrency(text: str) -> int:
    value = _count(text)
    if value > MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"at most {MAX_CONCURRENCY} points at once, got {value}")
    return value


def _items(text: str) -> list[str]:
    """The items of a comma list; an empty one (``0.1,,0.2``, a trailing comma) is refused."""
    items = [part.strip() for part in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"an empty item in {text!r}")
    return items


def _batch_size(text: str) -> int | str:
    if text == "full":
        return "full"
    try:
        value = parse_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'full', got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"batch size must be >= 1, got {value}")
    return value


def _float_list(text: str) -> list[float]:
    try:
        return [parse_float(part) for part in _items(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.01,0.1, got {text!r}") from None


def _batch_list(text: str) -> list[int | str]:
    return [_batch_size(part) for part in _items(text)]


def _sizes(text: str) -> list[int]:
    try:
        sizes = [parse_int(part) for part in _items(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 128,64, got {text!r}") from None
    if min(sizes) < 1:  # _items: at least one
        raise argparse.ArgumentTypeError(f"expected positive sizes like 128,64, got {text!r}")
    return sizes


def read_config(path: str) -> dict[str, Any]:
    """A job spec JSON file as a dict; too big, not UTF-8, not JSON or not an object: CliError.

    Each section present (dataset, model, ...) is checked to be an object too, so that the
    flags and the dataset URI can be merged into it and nothing is uploaded for a bad spec."""
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
    for section in SPEC_SECTIONS:
        if section in doc and not isinstance(doc[section], dict):
            raise CliError(f"{path}: '{section}' must be an object, not {_json_type(doc[section])}")
    return doc


def _json_type(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string" if isinstance(value, str) else "an array"


def spec_from_args(args: argparse.Namespace, dataset_uri: str | None) -> JobSpec:
    """Merge --config (if any) with the flags given; flags win."""
    doc: dict[str, Any] = read_config(args.config) if args.config else {}
    doc = {k: dict(v) if isinstance(v, dict) else v for k, v in doc.items()}
    for dest, (group, field) in SPEC_FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        section = doc.setdefault(group, {})  # an object: read_config checked
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
    try:
        return parse_spec(doc)
    except SpecError as exc:
        raise SpecError(_with_flags(str(exc), args)) from None


def _flag(dest: str) -> str:
    return "--no-standardize" if dest == "standardize" else "--" + dest.replace("_", "-")


def _with_flags(message: str, args: argparse.Namespace) -> str:
    """A spec error names the flag beside each field a flag set: ``optimizer.learning_rate
    (--lr): Input should be greater than 0`` (the field, for a --config, stays as it is)."""
    for dest, (group, field) in SPEC_FLAGS.items():
        if getattr(args, dest, None) is not None:
            path = re.escape(f"{group}.{field}")
            message = re.sub(rf"(?<![\w.]){path}(?![\w.])", rf"\g<0> ({_flag(dest)})", message)
    return message


# ---- parser ---------------------------------------------------------------------------
def _add_stack_flags(p: argparse.ArgumentParser, without: str = "default: embedded engine") -> None:
    g = p.add_argument_group("where to run")
    g.add_argument("--stack", help=f"name of a deployed lambdagrad stack ({without})")
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
        "--exclude",
        type=_items,
        help="CSV columns that are not features, e.g. id,notes (not read; predict ignores them)",
    )
    d.add_argument(
        "--format", choices=["csv", "npy", "npz"], help="file format; default: from the extension"
    )
    d.add_argument("--validation", type=number, help="held-out fraction, 0 allowed")
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
    m.add_argument("--l1", type=number, help="L1 penalty l1*|w| on weights, as a proximal step")
    m.add_argument("--l2", type=number, help="L2 penalty 0.5*l2*||w||^2 on weights")
    o = p.add_argument_group("optimizer")
    o.add_argument(
        "--optimizer",
        choices=["sgd", "momentum", "nesterov", "adam", "adamw", "adagrad", "rmsprop"],
        help="optimizer",
    )
    o.add_argument(
        "--lr",
        type=_float_list if lists else number,
        help=(
            "learning rates to try, a comma list such as 0.01,0.1 (default: "
            if lists
            else "learning rate (default: "
        )
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_LEARNING_RATE.items())
        + ")",
    )
    o.add_argument("--momentum", type=number, help="momentum / nesterov coefficient")
    o.add_argument("--beta1", type=number, help="Adam/AdamW beta1")
    o.add_argument("--beta2", type=number, help="Adam/AdamW beta2")
    o.add_argument("--eps", type=number, help="Adam/AdamW/RMSProp epsilon")
    o.add_argument("--weight-decay", type=number, help="AdamW decoupled weight decay")
    o.add_argument("--clip-norm", type=number, help="clip the gradient's global L2 norm to this")
    o.add_argument(
        "--schedule",
        choices=["constant", "step", "exponential", "inverse_time", "cosine"],
        help="learning-rate schedule over rounds",
    )
    o.add_argument("--decay-steps", type=whole_number, help="step schedule: rounds between drops")
    o.add_argument(
        "--decay-rate",
        type=number,
        help="step: factor per drop (default 0.5); exponential: factor per round (default "
        "0.99); inverse_time: rate per round (default 0.01)",
    )
    o.add_argument("--final-lr", type=number, help="cosine schedule: learning rate at the end")
    o.add_argument(
        "--warmup", type=whole_number, help="rounds of linear warm-up before the schedule"
    )
    t = p.add_argument_group("training")
    t.add_argument(
        "--batch-size",
        type=_batch_list if lists else _batch_size,
        help=("batch sizes to try, a comma list such as 32,full: " if lists else "")
        + "global batch per round: integer (1 = SGD) or 'full' (batch GD)",
    )
    t.add_argument("--workers", type=whole_number, help="data shards, one Lambda worker each")
    length = t.add_mutually_exclusive_group()
    length.add_argument(
        "--epochs",
        type=number,
        help="passes over the data; default 20, or 100 with --batch-size full",
    )
    length.add_argument("--rounds", type=whole_number, help="optimizer steps, instead of --epochs")
    t.add_argument(
        "--tolerance", type=number, help="stop when relative change of train loss < this"
    )
    t.add_argument(
        "--patience",
        type=whole_number,
        help="early stopping: rounds without validation gain; keeps the best round",
    )
    t.add_argument("--min-delta", type=number, help="early stopping: the least gain that counts")
    t.add_argument("--seed", type=whole_number, help="seed for split, initialisation and sampling")
    t.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        help="float32: shards and gradients in float32 (half the bytes); default float64",
    )
    t.add_argument(
        "--segment-rounds",
        type=whole_number,
        help="most rounds per Express segment (also cut by time); default from --workers",
    )
    t.add_argument(
        "--steps-per-round",
        type=whole_number,
        help="local SGD: K local steps per worker per round, then the reducer averages",
    )
    return t


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
    c.add_argument("--rows", type=_count, help="dataset rows (required for s3:// data)")
    c.add_argument("--features", type=_count, help="dataset features (required for s3:// data)")
    c.add_argument("--classes", type=_count, help="label classes (s3:// data; default 2)")
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
    c.add_argument(
        "--memory",
        type=whole_number,
        help="the workers' Lambda MB (default: the template's WorkerMemorySize; the other "
        "functions' come from the template)",
    )
    c.add_argument("--s3-latency", type=number, help="seconds per S3 request in the duration model")
    c.add_argument(
        "--price",
        action="append",
        metavar="NAME=DOLLARS",
        help="override a unit price, e.g. lambda_gb_second=0.0000166667 (repeatable)",
    )
    c.add_argument("--json", action="store_true", help="print the bill as one JSON object")
    c.add_argument(
        "--template",
        help="template.yaml to read the functions' memory, SegmentSeconds and "
        "RoundFunctionTimeout from",
    )
    _show_spec_defaults(es)
    c.add_argument("--model-name", help="price registering the model under a name, as train would")
    es.set_defaults(job_id=None)


def build_parser() -> argparse.ArgumentParser:
    """Every command and its flags; ``args.command`` names the command asked for."""
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
        type=number,
        metavar="FRACTION",
        help="fail this fraction of worker/reducer invocations (embedded engine only)",
    )
    _add_stack_flags(train)
    _show_spec_defaults(train)

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
    rout.add_argument(
        "--overwrite",
        action="store_true",
        help="replace another job's model in --out (a train --overwrite that did not finish)",
    )
    _add_stack_flags(re_)

    ev = sub.add_parser(
        "evaluate", help="score a trained model on labelled data", formatter_class=fmt
    )
    ev.add_argument("run", help="training output directory (holds model.json)")
    ev.add_argument("data", help="CSV/.npy/.npz file with the label column")
    ev.add_argument(
        "--label", type=str.strip, help="label column (default: the one the model was trained on)"
    )
    ev.add_argument("--format", choices=["csv", "npy", "npz"])
    ev.add_argument("--json", action="store_true", help="print exactly one JSON object")

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
    pr.add_argument(
        "--proba",
        action="store_true",
        help="a classifier's probabilities too: a p_<class> column per class",
    )
    _add_stack_flags(pr, "default: the run directory RUN_DIR")

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
        type=_concurrency,
        default=5,
        help="most points training at once (each uses --workers Lambdas; default: 5)",
    )
    sout = sw.add_argument_group("output")
    sout.add_argument("--out", help="output directory (default runs/SWEEP_ID)")
    sout.add_argument(
        "--overwrite", action="store_true", help="replace everything already in --out"
    )
    sout.add_argument("--quiet", action="store_true", help="no progress messages")
    sout.add_argument("--json", action="store_true", help="print one JSON object: best and results")
    _add_stack_flags(sw)
    _show_spec_defaults(sw)
    sw.set_defaults(job_id=None)

    mo = sub.add_parser("models", help="the model registry of a stack", formatter_class=fmt)
    msub = mo.add_subparsers(dest="models_command", required=True)
    ml = msub.add_parser("list", help="registered models and the jobs they serve")
    ml.add_argument("--json", action="store_true")
    registry = "required: the registry lives in the stack's bucket"
    _add_stack_flags(ml, registry)
    mp = msub.add_parser("promote", help="point a model name at a finished job")
    mp.add_argument("name")
    mp.add_argument("job_id")
    _add_stack_flags(mp, registry)

    su = sub.add_parser("submit", help="start a job by uploading its spec", formatter_class=fmt)
    su.add_argument("spec", help="job spec JSON (its job_id is ignored: the upload names the job)")
    su.add_argument("--data", help="a local dataset to upload and train on")
    su.add_argument("--follow", action="store_true", help="stream progress until the job ends")
    su.add_argument("--quiet", action="store_true", help="no progress bar")
    su.add_argument("--json", action="store_true", help="print the final status as JSON")
    _add_stack_flags(su)

    st = sub.add_parser("status", help="a job's progress", formatter_class=fmt)
    st.add_argument("job_id")
    st.add_argument("--follow", action="store_true", help="stream progress until the job ends")
    st.add_argument("--quiet", action="store_true", help="no progress bar")
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    st.add_argument(
        "--out", help="without --stack: the local job's run directory (default: runs/<job_id>)"
    )
    _add_stack_flags(st, "default: a local job's records in --out")
    _add_estimate_parser(sub)
    return parser
