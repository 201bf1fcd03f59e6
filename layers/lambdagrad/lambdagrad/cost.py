"""What a training job costs on AWS: the round structure, a duration model and the bill.

Three parts, each replaceable on its own:

- :func:`round_structure` -- *counts*: Step Functions transitions, Lambda invocations and
  S3 requests per round, per segment (one execution of the state machine) and per job, as
  a function of the number of workers. These are read off the code (``steps.py``) and the
  state machine (``statemachine/train.asl.json``); ``tests/integration/test_cost.py`` runs
  jobs on the embedded engine and compares every count with the execution history, the
  invocation counters and the S3 calls the handlers really made. Two switches:
  ``orchestration`` (``"express"``, what ``train.asl.json`` runs: the rounds of a segment in
  an Express child workflow; ``"standard"``: the plain loop, kept for comparison as
  ``benchmarks/standard_loop.asl.json``) and ``inline_gradients`` (small gradients travel
  in the worker's result instead of S3).
- :class:`DurationModel` -- *seconds*: billed Lambda duration per invocation, a fixed
  overhead plus a per-row x parameter term (for a linear model: per row x feature),
  measured on the development machine with the real step functions
  (``benchmarks/calibrate_cost.py``), plus a per-request S3 latency that a local run
  cannot measure. Durations are estimates; counts are exact.
- :mod:`lambdagrad.pricing` -- *dollars per unit*, dated.

:func:`estimate` combines them before a job runs (``lambdagrad estimate``);
:func:`actual_cost` does the same after it ran, with the rounds actually run and the
handler seconds the steps measured (``jobs/<id>/cost.json``).

Example
-------
>>> s = round_structure(10, orchestration="standard")
>>> s.transitions_per_round, s.s3_get_per_round, s.s3_put_per_round
(13, 22.0, 14.0)
>>> round_structure(10, orchestration="express").transitions_per_round
0
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from lambdagrad.pricing import DEFAULT_PRICES, Prices
from lambdagrad.transfer import gradient_inline
from lambdagrad.user_numbers import parse_float

__all__ = [
    "DEFAULT_DURATIONS",
    "DEFAULT_MEMORY_MB",
    "EXPRESS_MEMORY_MB",
    "CostBreakdown",
    "CostError",
    "DurationModel",
    "FunctionMemory",
    "JobShape",
    "RoundStructure",
    "actual_cost",
    "actual_cost_of_job",
    "cost_key",
    "estimate",
    "function_memory_mb",
    "handler_seconds",
    "price_overrides",
    "round_structure",
    "template_parameter",
    "write_cost",
]

Orchestration = Literal["standard", "express"]
ORCHESTRATIONS = ("standard", "express")

#: ``WorkerMemorySize``'s default in template.yaml (and ``ReduceMemorySize``'s); see
#: :class:`FunctionMemory` for each function's.
DEFAULT_MEMORY_MB = 1769
#: ``PrepareMemorySize``'s default in template.yaml.
DEFAULT_PREPARE_MEMORY_MB = 3008
#: The environment variable (template.yaml's Globals) that tells every function the
#: memory of each: ``prepare=3008,worker=1769,reduce=1769``.
MEMORY_ENV = "LAMBDAGRAD_FUNCTION_MEMORY"
#: Express workflows bill memory in 64 MB chunks; a round's state is far below one chunk.
EXPRESS_MEMORY_MB = 64
#: Express duration is rounded up to the next 100 ms, per execution.
EXPRESS_BILLING_SECONDS = 0.1
#: An Express execution may run at most 5 minutes.
EXPRESS_MAX_SECONDS = 300.0
#: template.yaml's RoundFunctionTimeout default: a worker or reducer call longer than this
#: fails. ``lambdagrad estimate`` reads the template's; this is for when there is none.
DEFAULT_ROUND_FUNCTION_TIMEOUT = 55.0
#: template.yaml's ``SegmentSeconds`` default: a segment ends after the round that passes it.
DEFAULT_SEGMENT_SECONDS = 120.0
#: An allowance for a handler's memory before any job data: its imports (Python, numpy,
#: boto3, Powertools, lambdagrad) take about 60 MB of RSS; the rest is for Lambda's runtime
#: and working buffers (below 128 MB, Lambda's smallest size, so a tiny job never warns).
RUNTIME_MB = 100.0
#: Lambda's largest memory size.
LAMBDA_MAX_MEMORY_MB = 10_240
#: Inline Map runs at most this many iterations at once (DESIGN.md §7).
INLINE_MAP_CONCURRENCY = 40
#: Standard parent states per segment with an Express child (statemachine/train.asl.json):
#: RunSegment (startExecution.sync:2 of the child), SegmentEnded, CountSegment, NextStep.
EXPRESS_PARENT_TRANSITIONS_PER_SEGMENT = 4
#: ... and once per job: IsContinuation, Prepare, StartSegments, Finalize.
EXPRESS_PARENT_TRANSITIONS_PER_JOB = 4
#: ``steps.STATUS_INTERVAL_SECONDS``: the reducer writes status.json at most this often.
STATUS_INTERVAL_SECONDS = 1.0
#: LIST requests return at most this many keys (finalize lists the metrics records).
LIST_PAGE = 1000
#: The structure the deployed state machine has, for cost.json and the estimate's default.
RUNNING_ORCHESTRATION: Orchestration = "express"


class CostError(ValueError):
    """A cost question that has no answer (unknown orchestration, bad price override)."""


def cost_key(job_id: str) -> str:
    """Where finalize writes the job's bill (next to status.json)."""
    return f"jobs/{job_id}/cost.json"


# ---- counts -------------------------------------------------------------------------
@dataclass(frozen=True)
class RoundStructure:
    """Requests one job makes, split into per round, per segment and per job.

    S3 counts are floats because status.json is written at most once a second: a round
    shorter than that writes it only a fraction of the time. HEAD requests are billed as
    GETs and LIST requests as PUTs, and are counted there.
    """

    workers: int
    orchestration: str
    inline_gradients: bool
    # every round
    transitions_per_round: int
    worker_invocations_per_round: int
    reduce_invocations_per_round: int
    s3_get_per_round: float
    s3_put_per_round: float
    # every segment (execution of the state machine)
    transitions_per_segment: int
    express_requests_per_segment: int
    s3_put_per_segment: float
    # once per job
    transitions_per_job: int
    s3_get_per_job: float
    s3_put_per_job: float

    def transitions(self, rounds: int, segments: int) -> int:
        """Standard state transitions of a job (what AWS bills for a Standard workflow)."""
        return (
            self.transitions_per_job
            + self.transitions_per_segment * segments
            + self.transitions_per_round * rounds
        )

    def s3_requests(self, rounds: int, segments: int) -> tuple[float, float]:
        """(GET-class, PUT-class) S3 requests of a job."""
        lists = math.ceil(max(rounds, 1) / LIST_PAGE)
        gets = self.s3_get_per_job + self.s3_get_per_round * rounds
        puts = (
            self.s3_put_per_job
            + lists
            + self.s3_put_per_segment * segments
            + self.s3_put_per_round * rounds
        )
        return gets, puts


def round_structure(
    workers: int,
    orchestration: Orchestration = RUNNING_ORCHESTRATION,
    inline_gradients: bool = False,
    *,
    status_writes_per_round: float = 1.0,
    register_model: bool = False,
) -> RoundStructure:
    """The counts the state machine and the steps produce for ``workers`` shards.

    Parameters
    ----------
    workers : number of shards (one worker invocation each per round).
    orchestration : ``"standard"`` -- the Map/Reduce/Choice loop runs in the Standard
        execution (``benchmarks/standard_loop.asl.json``); ``"express"`` -- what
        ``train.asl.json`` does: each segment's rounds run
        in one Express child execution started by the Standard parent, so the parent makes
        :data:`EXPRESS_PARENT_TRANSITIONS_PER_SEGMENT` transitions per segment and the
        child is billed per request and GB-s instead of per transition.
    inline_gradients : workers return their gradient in the result instead of writing
        ``grads/<round>/<k>.npy`` (one PUT and one reducer GET fewer per worker and round).
    status_writes_per_round : fraction of rounds whose reducer writes status.json
        (``min(1, round seconds / STATUS_INTERVAL_SECONDS)``; 1 is the upper bound).
    register_model : ``output.model_name`` is set (finalize promotes the model).

    What each count is made of (warm Lambdas: a worker reads the spec, meta and its shard
    once per job; the reducer keeps the checkpoint it wrote):

    ============================ =====================================================
    per round, transitions       Map + W Worker tasks + Reduce + NextStep (standard)
    per round, S3 GET            W params (workers) + 1 HEAD metrics + W grads
                                 (reducer; none inline) + 1 metrics record (finalize)
    per round, S3 PUT            W grads (none inline) + params + optimizer + metrics
                                 + status (a fraction, see above)
    per segment, transitions     IsContinuation + ContinueAsNew/Finalize (standard)
    per segment, S3 PUT          status at the hand-over when the interval did not write
    per job, transitions         Prepare
    per job, S3 GET              prepare: status, dataset, status; workers: 3 W (spec,
                                 meta, shard); reducer: spec, meta, params 0, optimizer
                                 0, validation; finalize: spec, meta, model.json
                                 (a finished job is not finalized again), params,
                                 validation, status
    per job, S3 PUT              prepare: claim, status, W shards, validation, params,
                                 optimizer, spec, meta, status; finalize: history,
                                 model.npz, model.json, cost.json, status (+ LIST of
                                 the metrics, one per 1,000 rounds)
    ============================ =====================================================
    """
    if orchestration not in ORCHESTRATIONS:
        raise CostError(f"orchestration: {orchestration!r} is not one of {ORCHESTRATIONS}")
    if workers < 1:
        raise CostError(f"workers: {workers} (at least 1)")
    w = workers
    grads = 0 if inline_gradients else w
    status = min(max(status_writes_per_round, 0.0), 1.0)
    standard = orchestration == "standard"
    return RoundStructure(
        workers=w,
        orchestration=orchestration,
        inline_gradients=inline_gradients,
        transitions_per_round=(w + 3) if standard else 0,
        worker_invocations_per_round=w,
        reduce_invocations_per_round=1,
        s3_get_per_round=float(w + 1 + grads + 1),
        s3_put_per_round=grads + 3 + status,
        transitions_per_segment=2 if standard else EXPRESS_PARENT_TRANSITIONS_PER_SEGMENT,
        express_requests_per_segment=0 if standard else 1,
        s3_put_per_segment=1.0 - status,
        transitions_per_job=1 if standard else EXPRESS_PARENT_TRANSITIONS_PER_JOB,
        s3_get_per_job=float(3 + 3 * w + 5 + 6 + (2 if register_model else 0)),
        s3_put_per_job=float((8 + w) + 5 + (1 if register_model else 0)),
    )


# ---- memory -------------------------------------------------------------------------
@dataclass(frozen=True)
class FunctionMemory:
    """Each function's memory (MB): Lambda bills an invocation's seconds at its own
    function's size, and Prepare (once per job, the whole dataset) has more than the
    round's functions. ``reduce`` is also Finalize's (both take ``ReduceMemorySize``).

    >>> FunctionMemory.from_env({MEMORY_ENV: "prepare=4096,worker=1024,reduce=2048"})
    FunctionMemory(prepare=4096, worker=1024, reduce=2048)
    """

    prepare: int = DEFAULT_PREPARE_MEMORY_MB
    worker: int = DEFAULT_MEMORY_MB
    reduce: int = DEFAULT_MEMORY_MB

    @classmethod
    def uniform(cls, memory_mb: int) -> FunctionMemory:
        return cls(prepare=memory_mb, worker=memory_mb, reduce=memory_mb)

    @classmethod
    def from_template(cls, template: dict[str, Any]) -> FunctionMemory:
        """Each function's MemorySize in a parsed SAM template (its parameters' defaults)."""
        return cls(
            prepare=function_memory_mb(template, "PrepareFunction"),
            worker=function_memory_mb(template, "WorkerFunction"),
            reduce=function_memory_mb(template, "ReduceFunction"),
        )

    @classmethod
    def from_env(cls, environ: Any) -> FunctionMemory:
        """From :data:`MEMORY_ENV`; a stack deployed before it existed gives only the
        running function's own (``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``), for every function."""
        fields = {}
        for item in str(environ.get(MEMORY_ENV) or "").split(","):
            name, _, value = item.partition("=")
            if name.strip() in ("prepare", "worker", "reduce") and value.strip().isdigit():
                fields[name.strip()] = int(value)
        if len(fields) == 3:
            return cls(**fields)
        return cls.uniform(int(environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") or DEFAULT_MEMORY_MB))

    def of(self, step: str) -> int:
        """The memory of a step's function: prepare, worker, reduce or finalize."""
        return self.reduce if step == "finalize" else getattr(self, step)

    def by_step(self) -> dict[str, int]:
        return {step: self.of(step) for step in ("prepare", "worker", "reduce", "finalize")}


# ---- seconds ------------------------------------------------------------------------
@dataclass(frozen=True)
class DurationModel:
    """Billed seconds per Lambda invocation: overhead + work term + S3 latency.

    The ``*_overhead_s`` and ``*_per_*`` defaults were measured on the development
    machine (2-core AMD EPYC, numpy with OpenBLAS, one thread) by
    ``benchmarks/calibrate_cost.py``, which runs the real step functions over an
    in-memory S3: they are CPU seconds of the code path without network. A 1,769 MB
    arm64 Lambda has one vCPU; treating it as equal to one core here is the main
    assumption. ``s3_request_s`` adds what a local run cannot see: AWS's S3 performance
    guidelines quote 100-200 ms first-byte latency for small objects; we take the low
    end for each request a step makes one after the other. ``invoke_s`` is the Step
    Functions -> Lambda dispatch latency per task (not billed, only in round seconds).
    """

    worker_overhead_s: float = 0.00025
    worker_per_row_param_s: float = 2.4e-9
    reduce_overhead_s: float = 0.0007
    reduce_per_worker_param_s: float = 6.7e-10
    reduce_per_worker_s: float = 1.2e-4
    prepare_overhead_s: float = 0.001
    prepare_per_row_feature_s: float = 1.6e-6
    finalize_overhead_s: float = 0.0052
    finalize_per_round_s: float = 8.3e-5
    s3_request_s: float = 0.1
    invoke_s: float = 0.05
    measured_on: str = "2026-11-26, 2-core AMD EPYC (benchmarks/calibrate_cost.py)"

    def worker(self, batch_rows: float, n_params: int, inline: bool = False) -> float:
        requests = 1 if inline else 2  # GET params, PUT gradient
        return (
            self.worker_overhead_s
            + self.worker_per_row_param_s * batch_rows * n_params
            + self.s3_request_s * requests
        )

    def reduce(self, workers: int, n_params: int, inline: bool = False) -> float:
        requests = 1 + (0 if inline else workers) + 3  # HEAD, grads, params/optimizer/metrics
        return (
            self.reduce_overhead_s
            + self.reduce_per_worker_s * workers
            + self.reduce_per_worker_param_s * workers * n_params
            + self.s3_request_s * requests
        )

    def prepare(self, rows: int, features: int, workers: int) -> float:
        requests = 4 + 8 + workers  # claim, status x2, dataset; puts
        return (
            self.prepare_overhead_s
            + self.prepare_per_row_feature_s * rows * features
            + self.s3_request_s * requests
        )

    def finalize(self, rounds: int) -> float:
        # the metrics records are fetched 16 at a time
        requests = 11 + math.ceil(rounds / 16)
        return (
            self.finalize_overhead_s
            + self.finalize_per_round_s * rounds
            + self.s3_request_s * requests
        )


DEFAULT_DURATIONS = DurationModel()


# ---- the job ------------------------------------------------------------------------
def _gradient_itemsize(spec: Any) -> int:
    """Bytes per gradient element a worker sends (``training.dtype``)."""
    return 8 if spec.training.dtype == "float64" else 4


def _state_vectors(optimizer: str) -> int:
    """Parameter-sized vectors an optimizer keeps between rounds: counted in its own state,
    initialised for three parameters (adam: ``mu`` and ``nu``)."""
    import numpy as np

    from lambdagrad.optim import make_optimizer

    state = make_optimizer(optimizer, 0.1).init(np.zeros(3))
    return sum(1 for value in state.values() if np.shape(value) == (3,))


@dataclass(frozen=True)
class JobShape:
    """What the bill depends on besides the structure: sizes and lengths."""

    rows: int  # training rows (after the validation split)
    features: int
    n_params: int
    workers: int
    rounds: int
    segment_rounds: int
    batch_rows: int  # the global batch of one round
    register_model: bool = False
    itemsize: int = 8  # bytes per gradient element sent (training.dtype)
    steps_per_round: int = 1  # K local steps: each worker computes K batches a round
    state_vectors: int = 0  # parameter-sized vectors the optimizer keeps (adam: 2)
    hidden_units: int = 0  # an mlp's hidden widths summed: activations per row

    def memory_mb(self) -> dict[str, float]:
        """About how much memory the model needs in a worker and in the reducer (MB), for
        the estimate's warning: the parameter-sized float64 vectors each holds at once
        (reducer: every worker's gradient as received, in the transfer dtype, then the
        parameters, their sum, the new parameters and the optimizer state read and written;
        worker: the parameters, its gradient and, with K local steps, its own copy), an
        mlp's activations of a worker's batch (forward and backward), and the runtime's own
        (:data:`RUNTIME_MB`). Not the worker's data shard: it is cached in memory up to half
        the function's, then in /tmp."""
        vector_mb = self.n_params * 8 / 2**20
        received_mb = self.workers * self.n_params * self.itemsize / 2**20
        batch = self.batch_rows / self.workers
        activations_mb = batch * self.hidden_units * 3 * 8 / 2**20
        return {
            "worker": RUNTIME_MB + vector_mb * (2 + (self.steps_per_round > 1)) + activations_mb,
            "reduce": RUNTIME_MB + received_mb + vector_mb * (3 + 2 * self.state_vectors),
        }

    @property
    def segments(self) -> int:
        return max(1, math.ceil(self.rounds / max(1, self.segment_rounds)))

    @property
    def inline_gradients(self) -> bool:
        """Whether the workers' gradients travel in their results (the workers' own rule)."""
        return gradient_inline(self.n_params, self.itemsize, self.workers)

    @classmethod
    def from_spec(cls, spec: Any, rows: int, features: int, n_classes: int) -> JobShape:
        """Sizes of a job from its spec and the dataset's total rows and features."""
        from lambdagrad.training import (
            global_batch,
            model_for,
            segment_rounds_for,
            total_rounds,
        )

        if rows < 1 or features < 1:
            raise CostError(f"rows and features must be positive, got {rows} x {features}")
        val = spec.dataset.validation  # as data.train_validation_split counts
        n_val = round(rows * val)
        if val > 0 and rows > 1:
            n_val = max(1, n_val)
        n_train = max(1, rows - n_val)
        model = model_for(spec, features, max(1, n_classes))
        return cls(
            rows=n_train,
            features=features,
            n_params=model.n_params,
            workers=spec.training.workers,
            rounds=total_rounds(spec, n_train),
            segment_rounds=segment_rounds_for(spec),
            batch_rows=global_batch(spec, n_train),
            register_model=bool(spec.output.model_name),
            itemsize=_gradient_itemsize(spec),
            steps_per_round=spec.training.steps_per_round,
            state_vectors=_state_vectors(spec.optimizer.name),
            hidden_units=sum(spec.model.hidden) if spec.model.type == "mlp" else 0,
        )


@dataclass
class CostLine:
    """One row of the bill: a quantity per round and in total, priced."""

    item: str
    unit: str
    per_round: float
    total: float
    unit_price: float

    @property
    def dollars_per_round(self) -> float:
        return self.per_round * self.unit_price

    @property
    def dollars(self) -> float:
        return self.total * self.unit_price


@dataclass
class CostBreakdown:
    """The bill of one job: lines, the structure and sizes behind it, and the prices' date."""

    lines: list[CostLine]
    rounds: int
    segments: int
    workers: int
    orchestration: str
    inline_gradients: bool
    prices: Prices
    basis: str  # "estimate" or "measured"
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def dollars_per_round(self) -> float:
        return sum(line.dollars_per_round for line in self.lines)

    @property
    def dollars(self) -> float:
        return sum(line.dollars for line in self.lines)

    def line(self, item: str) -> CostLine:
        return next(line for line in self.lines if line.item == item)

    def to_json(self) -> dict[str, Any]:
        """The document written to cost.json (and printed by ``estimate --json``)."""
        return {
            "basis": self.basis,
            "rounds": self.rounds,
            "segments": self.segments,
            "workers": self.workers,
            "orchestration": self.orchestration,
            "inline_gradients": self.inline_gradients,
            "lines": [
                {
                    "item": line.item,
                    "unit": line.unit,
                    "per_round": line.per_round,
                    "total": line.total,
                    "unit_price": line.unit_price,
                    "dollars_per_round": line.dollars_per_round,
                    "dollars": line.dollars,
                }
                for line in self.lines
            ],
            "dollars_per_round": self.dollars_per_round,
            "dollars": self.dollars,
            "prices": asdict(self.prices),
            "details": self.details,
        }


def _memory(memory_mb: int | FunctionMemory) -> FunctionMemory:
    """A number is every function's memory (the scale model prices one size)."""
    return memory_mb if isinstance(memory_mb, FunctionMemory) else FunctionMemory.uniform(memory_mb)


def _gb_seconds(seconds: float, memory_mb: int) -> float:
    """Lambda bills each invocation's duration rounded up to 1 ms, times its memory."""
    return math.ceil(seconds * 1000 - 1e-9) / 1000 * memory_mb / 1024


def _express_gb_seconds(seconds: float) -> float:
    units = math.ceil(seconds / EXPRESS_BILLING_SECONDS - 1e-9)
    return units * EXPRESS_BILLING_SECONDS * EXPRESS_MEMORY_MB / 1024


def _bill(
    structure: RoundStructure,
    rounds: int,
    segments: int,
    lambda_gb_s: tuple[float, float],  # per round, total
    lambda_requests_total: int,
    round_seconds: float,
    prices: Prices,
) -> list[CostLine]:
    s = structure
    gets, puts = s.s3_requests(rounds, segments)
    per_round_requests = s.worker_invocations_per_round + s.reduce_invocations_per_round
    lines = [
        CostLine("Lambda compute", "GB-s", lambda_gb_s[0], lambda_gb_s[1], prices.lambda_gb_second),
        CostLine(
            "Lambda requests",
            "requests",
            per_round_requests,
            lambda_requests_total,
            prices.lambda_request,
        ),
        CostLine("S3 PUT/LIST", "requests", s.s3_put_per_round, puts, prices.s3_put),
        CostLine("S3 GET/HEAD", "requests", s.s3_get_per_round, gets, prices.s3_get),
        CostLine(
            "Step Functions Standard",
            "transitions",
            s.transitions_per_round,
            s.transitions(rounds, segments),
            prices.standard_transition,
        ),
    ]
    if s.orchestration == "express":
        rounds_per_segment = rounds / max(1, segments)
        segment_gb_s = _express_gb_seconds(round_seconds * rounds_per_segment)
        lines += [
            CostLine(
                "Step Functions Express",
                "requests",
                s.express_requests_per_segment / max(rounds_per_segment, 1),
                s.express_requests_per_segment * segments,
                prices.express_request,
            ),
            CostLine(
                "Step Functions Express",
                "GB-s",
                segment_gb_s / max(rounds_per_segment, 1),
                segment_gb_s * segments,
                prices.express_gb_second,
            ),
        ]
    return lines


def estimate(
    shape: JobShape,
    *,
    orchestration: Orchestration = RUNNING_ORCHESTRATION,
    inline_gradients: bool | None = None,
    memory_mb: int | FunctionMemory = FunctionMemory(),
    durations: DurationModel = DEFAULT_DURATIONS,
    prices: Prices = DEFAULT_PRICES,
    segment_seconds: float = DEFAULT_SEGMENT_SECONDS,
    round_function_timeout: float = DEFAULT_ROUND_FUNCTION_TIMEOUT,
) -> CostBreakdown:
    """The bill of a job before it runs: exact counts, modelled durations.

    Assumes every round runs (no early stop) and no retries; both only lower/raise the
    count of rounds, which ``cost.json`` reports as it happened. With Express segments a
    segment also ends after the round that passes ``segment_seconds`` (the deployed
    ``SegmentSeconds``), so long rounds mean more, shorter segments.
    """
    w, p = shape.workers, shape.n_params
    if inline_gradients is None:  # as the workers decide it
        inline_gradients = shape.inline_gradients
    worker_s = durations.worker(shape.batch_rows * shape.steps_per_round / w, p, inline_gradients)
    reduce_s = durations.reduce(w, p, inline_gradients)
    waves = math.ceil(w / INLINE_MAP_CONCURRENCY)
    round_s = waves * (durations.invoke_s + worker_s) + durations.invoke_s + reduce_s
    structure = round_structure(
        w,
        orchestration,
        inline_gradients,
        status_writes_per_round=min(1.0, round_s / STATUS_INTERVAL_SECONDS),
        register_model=shape.register_model,
    )
    memory = _memory(memory_mb)
    per_round_gb_s = w * _gb_seconds(worker_s, memory.worker) + _gb_seconds(reduce_s, memory.reduce)
    job_gb_s = _gb_seconds(
        durations.prepare(shape.rows, shape.features, w), memory.prepare
    ) + _gb_seconds(durations.finalize(shape.rounds), memory.reduce)
    total_gb_s = per_round_gb_s * shape.rounds + job_gb_s
    requests = (w + 1) * shape.rounds + 2
    segments = shape.segments
    if orchestration == "express":
        timed = max(1, math.floor(segment_seconds / round_s) + 1) if round_s > 0 else shape.rounds
        segments = max(segments, math.ceil(shape.rounds / timed))
    lines = _bill(
        structure,
        shape.rounds,
        segments,
        (per_round_gb_s, total_gb_s),
        requests,
        round_s,
        prices,
    )
    warnings = []
    for step, seconds in (("worker", worker_s), ("reducer", reduce_s)):
        if seconds > round_function_timeout:
            warnings.append(
                f"a {step} call takes about {seconds:.0f} s, over the {round_function_timeout:.0f}"
                " s RoundFunctionTimeout: every round would time out; use more workers, smaller"
                " batches or fewer local steps"
            )
    needs = shape.memory_mb()
    for step, parameter, who, holds in (
        ("worker", "WorkerMemorySize", "a worker", "parameters, gradient, activations"),
        ("reduce", "ReduceMemorySize", "the reducer", "workers' gradients, parameters, state"),
    ):
        if needs[step] > memory.of(step):
            smaller = "a smaller model" + (" or fewer workers" if step == "reduce" else "")
            fix = (
                f"use {smaller}, or raise {parameter} (now {memory.of(step)} MB)"
                if needs[step] <= LAMBDA_MAX_MEMORY_MB
                else f"Lambda allows at most {LAMBDA_MAX_MEMORY_MB:,} MB: use {smaller}"
            )
            warnings.append(
                f"{who} needs about {needs[step]:,.0f} MB ({holds}; {p:,} parameters as "
                f"float64): more than its {memory.of(step)} MB, so it would run out of "
                f"memory; {fix}"
            )
    if orchestration == "express" and segment_seconds + round_s > EXPRESS_MAX_SECONDS:
        warnings.append(
            f"a segment runs up to {segment_seconds:.0f} s plus one round of about "
            f"{round_s:.0f} s, over Express's {EXPRESS_MAX_SECONDS:.0f} s limit: lower "
            "SegmentSeconds or the round's work"
        )
    return CostBreakdown(
        lines=lines,
        rounds=shape.rounds,
        segments=segments,
        workers=w,
        orchestration=orchestration,
        inline_gradients=inline_gradients,
        prices=prices,
        basis="estimate",
        details={
            "memory_mb": memory.worker,
            "memory_mb_by_function": memory.by_step(),
            "rows": shape.rows,
            "features": shape.features,
            "n_params": p,
            "batch_rows": shape.batch_rows,
            "segment_rounds": shape.segment_rounds,
            "seconds": {
                "worker": worker_s,
                "reduce": reduce_s,
                "round": round_s,
                "job": round_s * shape.rounds,
            },
            "durations": asdict(durations),
            "warnings": warnings,
        },
    )


def actual_cost(
    *,
    workers: int,
    rounds: int,
    segments: int,
    seconds: dict[str, float],
    billed_ms: dict[str, int],
    invocations: dict[str, int],
    memory_mb: int | FunctionMemory = FunctionMemory(),
    orchestration: Orchestration = RUNNING_ORCHESTRATION,
    inline_gradients: bool = False,
    register_model: bool = False,
    prices: Prices = DEFAULT_PRICES,
) -> CostBreakdown:
    """The bill of a finished job from what the steps measured.

    ``billed_ms`` sums each invocation's measured handler time rounded up to 1 ms (per
    step: prepare, worker, reduce, finalize); ``seconds`` the same unrounded;
    ``invocations`` counts them. Counts of transitions and S3 requests come from the same
    structure as the estimate, for the rounds and segments actually run; status writes are
    counted at the upper bound of one per round. Retries are not in the counts.
    """
    structure = round_structure(
        workers,
        orchestration,
        inline_gradients,
        status_writes_per_round=1.0,
        register_model=register_model,
    )
    memory = _memory(memory_mb)
    gb_s = {step: ms / 1000 * memory.of(step) / 1024 for step, ms in billed_ms.items()}
    per_round_gb_s = (gb_s.get("worker", 0.0) + gb_s.get("reduce", 0.0)) / max(rounds, 1)
    loop_seconds = seconds.get("worker", 0.0) / max(workers, 1) + seconds.get("reduce", 0.0)
    lines = _bill(
        structure,
        rounds,
        segments,
        (per_round_gb_s, sum(gb_s.values())),
        sum(invocations.values()),
        loop_seconds / max(rounds, 1),
        prices,
    )
    return CostBreakdown(
        lines=lines,
        rounds=rounds,
        segments=segments,
        workers=workers,
        orchestration=orchestration,
        inline_gradients=inline_gradients,
        prices=prices,
        basis="measured",
        details={
            "memory_mb": memory.worker,
            "memory_mb_by_function": memory.by_step(),
            "invocations": invocations,
            "handler_seconds": seconds,
            "billed_ms": billed_ms,
        },
    )


# ---- what the steps measure ----------------------------------------------------------
def _billed_ms(seconds: float) -> int:
    return math.ceil(seconds * 1000 - 1e-9)


def handler_seconds(results: list[dict[str, Any]], reduce_seconds: float) -> dict[str, Any]:
    """The Lambda seconds of one round, for its metrics record: the workers' own
    measurements (from their results) and the reducer's."""
    worker = [float(r.get("seconds") or 0.0) for r in results]
    return {
        "workers": len(worker),
        "worker": sum(worker),
        "worker_billed_ms": sum(_billed_ms(s) for s in worker),
        "reduce": reduce_seconds,
        "reduce_billed_ms": _billed_ms(reduce_seconds),
    }


def actual_cost_of_job(
    spec: Any,
    meta: dict[str, Any],
    records: list[dict[str, Any]],
    rounds: int,
    finalize_seconds: float,
    n_params: int,
    prices: Prices = DEFAULT_PRICES,
) -> CostBreakdown:
    """The bill of a finished job from its metrics records (one per round run) and meta.

    Segments are the distinct ``segment_started`` of the rounds' records: every segment that
    committed a round (one the time limit cut short, or a resumed job's, included); records
    without it (written by an earlier version) count ``segment_rounds`` rounds a segment.
    Not counted: the training execution's 3 transitions of a continue-as-new, and a
    resume's own.

    Each function's memory comes from the stack's configuration (:data:`MEMORY_ENV`, set
    by template.yaml for every function): what it is when the job finishes.
    """
    memory = FunctionMemory.from_env(os.environ)
    workers = spec.training.workers
    measured = [r.get("lambda_seconds") or {} for r in records[:rounds]]
    prepare_s = float(meta.get("prepare_seconds") or 0.0)
    seconds = {
        "prepare": prepare_s,
        "worker": sum(m.get("worker", 0.0) for m in measured),
        "reduce": sum(m.get("reduce", 0.0) for m in measured),
        "finalize": finalize_seconds,
    }
    billed = {
        "prepare": _billed_ms(prepare_s),
        "worker": sum(int(m.get("worker_billed_ms", 0)) for m in measured),
        "reduce": sum(int(m.get("reduce_billed_ms", 0)) for m in measured),
        "finalize": _billed_ms(finalize_seconds),
    }
    invocations = {"prepare": 1, "worker": workers * rounds, "reduce": rounds, "finalize": 1}
    started = [r.get("segment_started") for r in records[:rounds]]
    if started and all(isinstance(s, str) for s in started):
        segments = len(set(started))
    else:
        segments = max(1, math.ceil(rounds / max(1, int(meta.get("segment_rounds") or 1))))
    return actual_cost(
        workers=workers,
        rounds=rounds,
        segments=segments,
        seconds=seconds,
        billed_ms=billed,
        invocations=invocations,
        memory_mb=memory,
        orchestration=RUNNING_ORCHESTRATION,
        inline_gradients=gradient_inline(n_params, _gradient_itemsize(spec), workers),
        register_model=bool(spec.output.model_name),
        prices=prices,
    )


def write_cost(store: Any, job_id: str, cost: CostBreakdown) -> None:
    """Write ``jobs/<job_id>/cost.json`` (a :class:`~lambdagrad.store.Store`)."""
    store.put_json(cost_key(job_id), cost.to_json())


# ---- inputs -------------------------------------------------------------------------
def function_memory_mb(template: dict[str, Any], logical_id: str = "WorkerFunction") -> int:
    """A function's MemorySize in a parsed SAM template: its own, a parameter's default,
    or the Globals' (CloudFormation tags parsed as ``{"Ref": name}``)."""

    def resolve(value: Any) -> int | None:
        if isinstance(value, dict) and "Ref" in value:
            param = template.get("Parameters", {}).get(value["Ref"], {})
            return resolve(param.get("Default"))
        return None if value is None else int(value)

    props = template.get("Resources", {}).get(logical_id, {}).get("Properties", {})
    memory = resolve(props.get("MemorySize"))
    if memory is None:
        memory = resolve(template.get("Globals", {}).get("Function", {}).get("MemorySize"))
    return memory if memory is not None else 128


def template_parameter(template: dict[str, Any], name: str, default: float) -> float:
    """A parameter's default in a parsed SAM template (``SegmentSeconds``), else ``default``."""
    value = template.get("Parameters", {}).get(name, {}).get("Default")
    return default if value is None else float(value)


def price_overrides(prices: Prices, assignments: list[str]) -> Prices:
    """Prices with ``name=value`` overrides (``lambda_gb_second=0.0000166667``)."""
    fields = {name for name in asdict(prices) if name not in ("as_of", "region")}
    changes: dict[str, Any] = {}
    for text in assignments:
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or name not in fields:
            raise CostError(
                f"--price {text!r}: expected NAME=DOLLARS with NAME one of {sorted(fields)}"
            )
        try:
            number = parse_float(value)  # 1_0 is refused, not read as 10
        except ValueError:
            raise CostError(f"--price {text!r}: {value!r} is not a number") from None
        if not math.isfinite(number) or number < 0:
            raise CostError(f"--price {text!r}: a price must be a finite number >= 0")
        changes[name] = number
    return replace(prices, **changes) if changes else prices
