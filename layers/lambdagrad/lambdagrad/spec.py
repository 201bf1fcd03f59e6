"""The job spec: one pydantic model, the single source of truth.

CLI flags, the sample files in ``events/``, the state machine input and every handler
read and write this model. Unknown fields are errors and every number is range-checked,
so a typo in a job file fails before any Lambda runs.

Example
-------
>>> spec = JobSpec.model_validate({"dataset": {"uri": "s3://my-bucket/d.csv", "label": "y"}})
>>> spec.model.type, spec.training.batch_size
('linear', 64)
"""

from __future__ import annotations

import json
import re
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "DatasetSpec",
    "JobSpec",
    "ModelSpec",
    "OptimizerSpec",
    "OutputSpec",
    "SpecError",
    "TrainingSpec",
    "parse_spec",
]

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,59}$"
MAX_WORKERS = 1000
MAX_SPEC_BYTES = 64 * 1024  # a job spec is a few hundred bytes; anything near this is a mistake
MAX_FEATURES = 10_000  # default dataset.max_features: a guard against the wrong file
DEFAULT_LEARNING_RATE = {
    "sgd": 0.1,
    "momentum": 0.05,
    "nesterov": 0.05,
    "adam": 0.01,
    "adamw": 0.01,
    "adagrad": 0.1,
    "rmsprop": 0.01,
}


class SpecError(ValueError):
    """A job spec failed validation; the message names every bad field."""


def _stored(info: ValidationInfo) -> bool:
    """Whether the spec being read is a job's stored one (``parse_spec(stored=True)``)."""
    return bool(info.context and info.context.get("stored"))


def _is_numeric(kind: Any) -> bool:
    """Whether a field's type is a number, or a union with one (``int | Literal["full"]``)."""
    options = get_args(kind) if get_origin(kind) in (Union, UnionType) else (kind,)
    bare = [get_args(o)[0] if get_origin(o) is Annotated else o for o in options]
    return any(t in (int, float) for t in bare)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic reads ``true`` as 1 for a number: ``"batch_size": true`` would be SGD."""
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and _is_numeric(field.annotation):
            raise ValueError(f"expected a number, got {str(value).lower()}")
        return value


class DatasetSpec(_Strict):
    """Where the data is and how to read it."""

    uri: str = Field(min_length=1, description="s3://bucket/key of the dataset")
    format: Literal["csv", "npy", "npz"] | None = Field(
        None, description="file format; inferred from the extension when omitted"
    )
    label: str | None = Field(
        None, description="label column (CSV) or column index (npy); an npz's labels are array y"
    )
    exclude: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list,
        max_length=1000,
        description="CSV columns that are not features (an id, a note): not read",
    )
    validation: float = Field(0.1, ge=0.0, le=0.9, description="held-out fraction")
    standardize: bool = Field(True, description="scale features to zero mean, unit variance")
    max_features: int = Field(
        MAX_FEATURES, ge=1, le=1_000_000, description="refuse data with more feature columns"
    )

    @field_validator("label", mode="before")
    @classmethod
    def _label_column(cls, value: Any) -> Any:
        """A column name as the data reader sees header names (stripped); an .npy column
        index may also come as a JSON number."""
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str):
            value = value.strip()
            if not value:
                raise ValueError("must name a column (leave it out for the last column)")
        return value

    @field_validator("uri")
    @classmethod
    def _s3_uri(cls, value: str) -> str:
        if not re.match(r"^s3://[a-z0-9.\-]{3,63}/[^\s]+$", value):
            bucket, _, key = value.removeprefix("s3://").partition("/")
            if not value.startswith("s3://") or not bucket or not key:
                raise ValueError(f"must look like s3://bucket/key, got {value!r}")
            if not re.match(r"^[a-z0-9.\-]{3,63}$", bucket):
                raise ValueError(
                    f"{bucket!r} in {value!r} is not an S3 bucket name (3-63 lowercase "
                    "letters, digits, dots and hyphens)"
                )
            raise ValueError(f"the key of {value!r} has white space")
        key = value.split("/", 3)[3]
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"key {key!r} must be relative and contain no '..'")
        return value


TYPE_TASKS = {"linear": "regression", "logistic": "classification", "softmax": "classification"}


class ModelSpec(_Strict):
    """Which model to fit, and its regularisation.

    ``task`` is fixed by the type for linear (regression), logistic and softmax
    (classification); an mlp does either, ``auto`` deciding from the labels when the job
    is prepared (the saved spec then holds the decision).
    """

    type: Literal["linear", "logistic", "softmax", "mlp"] = "linear"
    hidden: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=list, max_length=8, description="mlp hidden layer sizes (default [64])"
    )
    activation: Literal["relu", "tanh", "sigmoid", "gelu"] = "relu"
    task: Literal["auto", "regression", "classification"] = "auto"
    l1: float = Field(0.0, ge=0.0, le=1e6, description="L1 penalty l1*|w| (proximal step)")
    l2: float = Field(0.0, ge=0.0, le=1e6, description="L2 penalty 0.5*l2*||w||^2 (not biases)")

    @model_validator(mode="before")
    @classmethod
    def _task_of_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type", "linear") in TYPE_TASKS:
            fixed = TYPE_TASKS[data.get("type", "linear")]
            if data.get("task", "auto") not in ("auto", fixed):
                raise ValueError(f"a {data.get('type', 'linear')} model is for {fixed}")
            data = {**data, "task": fixed}
        return data

    @field_validator("hidden", mode="before")
    @classmethod
    def _no_booleans_for_sizes(cls, value: Any) -> Any:
        """``[true, true]`` would be read as two layers of width 1."""
        if isinstance(value, list) and any(isinstance(v, bool) for v in value):
            raise ValueError(f"expected layer sizes (whole numbers), got {json.dumps(value)}")
        return value

    @model_validator(mode="after")
    def _hidden_for_mlp(self, info: ValidationInfo) -> ModelSpec:
        if self.type != "mlp" and self.hidden:
            raise ValueError(f"hidden layers are for model type mlp, not {self.type}")
        explicit = "hidden" in self.model_fields_set and not _stored(info)
        if self.type == "mlp" and explicit and not self.hidden:
            raise ValueError(
                "hidden: [] gives an mlp no hidden layer; leave it out for the default [64], "
                "or use model type linear, logistic or softmax for none"
            )
        if self.type != "mlp" and self.activation != "relu" and not _stored(info):
            raise ValueError(f"an activation is for model type mlp, not {self.type}")
        if self.type == "mlp" and not self.hidden:
            object.__setattr__(self, "hidden", [64])
        return self


#: Hyper-parameters only some optimizers or schedules read: the field that picks them, and
#: the choices that read them. Set to anything but its default elsewhere, one is refused in
#: a new job (it would be ignored without a word); a job's stored spec is read as it is.
READ_ONLY_BY = {
    "momentum": ("name", ("momentum", "nesterov")),
    "beta1": ("name", ("adam", "adamw")),
    "beta2": ("name", ("adam", "adamw")),
    "eps": ("name", ("adam", "adamw", "rmsprop")),
    "weight_decay": ("name", ("adamw",)),
    "decay_steps": ("schedule", ("step",)),
    "decay_rate": ("schedule", ("step", "exponential", "inverse_time")),
    "final_lr": ("schedule", ("cosine",)),
}
#: decay_rate when not given, by schedule: a factor per drop (step, every decay_steps
#: rounds), a factor per round (exponential: half the rate after 69 rounds), a rate per
#: round (inverse_time: half after 100).
DEFAULT_DECAY_RATE = {"step": 0.5, "exponential": 0.99, "inverse_time": 0.01}


class OptimizerSpec(_Strict):
    """Optimizer, learning-rate schedule and their hyper-parameters (``lambdagrad.optim``)."""

    name: Literal["sgd", "momentum", "nesterov", "adam", "adamw", "adagrad", "rmsprop"] = "sgd"
    learning_rate: float | None = Field(
        None, gt=0.0, le=1e3, description="step size; a per-optimizer default when omitted"
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="momentum / nesterov coefficient")
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.999, ge=0.0, lt=1.0)
    eps: float = Field(1e-8, gt=0.0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0, description="adamw decoupled decay")
    clip_norm: float | None = Field(None, gt=0.0, le=1e6, description="clip gradient norm")
    schedule: Literal["constant", "step", "exponential", "inverse_time", "cosine"] = "constant"
    decay_steps: int = Field(100, ge=1, le=10_000_000, description="step schedule: rounds per drop")
    decay_rate: float | None = Field(
        None,
        gt=0.0,
        le=1e3,
        description="step: factor per drop (default 0.5); exponential: factor per round "
        "(0.99); inverse_time: rate per round (0.01)",
    )
    final_lr: float = Field(0.0, ge=0.0, le=1e3, description="cosine: learning rate at the end")
    warmup: int = Field(0, ge=0, le=10_000_000, description="rounds of linear warm-up")

    @model_validator(mode="after")
    def _read_by_the_choice(self, info: ValidationInfo) -> OptimizerSpec:
        if _stored(info):
            return self
        for field, (chooser, readers) in READ_ONLY_BY.items():
            value, default = getattr(self, field), type(self).model_fields[field].default
            if getattr(self, chooser) not in readers and value != default:
                kind = "optimizer" if chooser == "name" else "schedule"
                raise ValueError(
                    f"{field} {value} is read by the {' / '.join(readers)} {kind} only, not "
                    f"{getattr(self, chooser)} (it would be ignored)"
                )
        return self

    @model_validator(mode="after")
    def _cosine_decays(self, info: ValidationInfo) -> OptimizerSpec:
        if self.schedule == "cosine" and self.final_lr > self.lr and not _stored(info):
            raise ValueError(
                f"final_lr {self.final_lr:g} is above the learning rate {self.lr:g}: a cosine "
                "schedule decays to final_lr"
            )
        return self

    @model_validator(mode="after")
    def _decay_factor(self) -> OptimizerSpec:
        if self.schedule in ("step", "exponential") and (self.decay_rate or 0) > 1:
            raise ValueError(
                f"decay_rate {self.decay_rate} would grow the learning rate; "
                f"a {self.schedule} schedule needs a factor in (0, 1]"
            )
        return self

    @property
    def lr(self) -> float:
        """The learning rate in force (explicit or the optimizer's default)."""
        if self.learning_rate is not None:
            return self.learning_rate
        return DEFAULT_LEARNING_RATE[self.name]

    @property
    def decay(self) -> float | None:
        """The schedule's decay rate in force (explicit or the schedule's default; None for
        a schedule that has none). The spec keeps None, so a spec reused with another
        schedule takes that one's default."""
        if self.decay_rate is not None:
            return self.decay_rate
        return DEFAULT_DECAY_RATE.get(self.schedule)


class TrainingSpec(_Strict):
    """How long and how wide to train. Batch size is the one knob for GD / SGD / mini-batch."""

    batch_size: Annotated[int, Field(ge=1, le=10_000_000)] | Literal["full"] = Field(
        64, description="global batch per round, split across workers; 1 = SGD, 'full' = batch GD"
    )
    workers: int = Field(4, ge=1, le=MAX_WORKERS, description="data shards, one Lambda each")
    epochs: float | None = Field(None, gt=0.0, le=1e6)
    rounds: int | None = Field(None, ge=1, le=10_000_000)
    tolerance: float = Field(
        0.0, ge=0.0, le=1.0, description="stop when |Δ train loss| / train loss falls below this"
    )
    seed: int = Field(0, ge=0, le=2**32 - 1)
    segment_rounds: int | None = Field(
        None, ge=1, le=100_000, description="most rounds per Express segment (auto)"
    )
    patience: int | None = Field(
        None, ge=1, le=1_000_000, description="early stopping: rounds without improvement"
    )
    min_delta: float = Field(0.0, ge=0.0, le=1e12, description="early stopping: least gain")
    steps_per_round: int = Field(
        1,
        ge=1,
        le=1000,
        description=(
            "local SGD: each worker takes K plain SGD steps (data loss + L2, the round's "
            "learning rate) from the round's parameters on K successive local batches; the "
            "reducer averages the workers' displacements weighted by rows and applies the "
            "optimizer to it as a pseudo-gradient (sgd: the new parameters are the weighted "
            "model average; momentum/adam/...: server momentum/adaptivity over rounds; "
            "l1 is one proximal step of K * lr * l1 per round). epochs count K batches per "
            "round. 1 = plain synchronous mini-batch training"
        ),
    )
    dtype: Literal["float64", "float32"] = Field(
        "float64",
        description="float32: shards stored and gradients computed and sent in float32 "
        "(half the bytes); parameters and optimizer state stay float64",
    )

    @model_validator(mode="after")
    def _one_length(self) -> TrainingSpec:
        if self.epochs is not None and self.rounds is not None:
            raise ValueError("give epochs or rounds, not both")
        return self

    @property
    def full_batch(self) -> bool:
        return self.batch_size == "full"


class OutputSpec(_Strict):
    model_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class JobSpec(_Strict):
    """A whole training job."""

    job_id: str | None = Field(None, pattern=JOB_ID_PATTERN)
    dataset: DatasetSpec
    model: ModelSpec = ModelSpec()
    optimizer: OptimizerSpec = OptimizerSpec()
    training: TrainingSpec = TrainingSpec()
    output: OutputSpec = OutputSpec()

    @model_validator(mode="after")
    def _early_stopping_needs_validation(self) -> JobSpec:
        if self.training.patience is not None and self.dataset.validation == 0:
            raise ValueError("training.patience needs a validation split (dataset.validation > 0)")
        return self

    @property
    def default_epochs(self) -> float:
        """Epochs when neither epochs nor rounds is given: enough for the defaults to converge."""
        return 100.0 if self.training.full_batch else 20.0


def _format_errors(exc: ValidationError) -> str:
    found: dict[str, list[str]] = {}
    for err in exc.errors():
        # a union's branches add their tags (``constrained-int``, ``literal['full']``) to
        # the location: keep the field path alone and join the branches' messages with "or"
        loc = [str(p) for p in err["loc"] if isinstance(p, int) or str(p).isidentifier()]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "string_pattern_mismatch":  # say what was given, too
            msg = f"{err['input']!r} does not match {err['ctx']['pattern']}"
        messages = found.setdefault(".".join(loc) or "spec", [])
        if msg not in messages:  # a key given twice in the JSON is reported twice
            messages.append(msg)
    return "invalid job spec: " + "; ".join(f"{w}: {' or '.join(m)}" for w, m in found.items())


def _check_size(data: Any) -> None:
    """Refuse a spec over MAX_SPEC_BYTES (as JSON text) before validating any field."""
    if isinstance(data, str | bytes):
        size = len(data.encode() if isinstance(data, str) else data)
    else:
        try:
            size = len(json.dumps(data, default=str).encode())
        except (TypeError, ValueError):
            return  # not JSON-like: validation names the bad part
    if size > MAX_SPEC_BYTES:
        raise SpecError(
            f"invalid job spec: spec is {size} bytes; the limit is {MAX_SPEC_BYTES} "
            f"({MAX_SPEC_BYTES // 1024} KiB)"
        )


def parse_spec(data: Any, *, stored: bool = False) -> JobSpec:
    """Validate a dict (or JSON text) into a JobSpec, raising SpecError that names each field.

    A spec larger than ``MAX_SPEC_BYTES`` as JSON is refused whole, whatever its source.
    ``stored``: a job's own spec read back (its steps, resume), which an earlier version
    may have written: the checks that refuse a new job's ignored hyper-parameters are off.
    """
    _check_size(data)
    context = {"stored": stored}
    try:
        if isinstance(data, str | bytes):
            return JobSpec.model_validate_json(data, context=context)
        return JobSpec.model_validate(data, context=context)
    except ValidationError as exc:
        raise SpecError(_format_errors(exc)) from None
