"""The stack client: start a job, follow it, fetch its model.

The same code drives a deployed stack (boto3 against AWS) and the embedded engine
(boto3 against moto): the CLI never branches on where the stack runs. Progress comes
from the job's ``status.json``, which the steps update each round, so following a job
works across continue-as-new executions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lambdagrad.spec import JobSpec
from lambdagrad.store import JobKeys, MissingObjectError, Store

__all__ = ["TERMINAL_STATES", "JobFailedError", "StackClient", "StackError"]

TERMINAL_STATES = {"SUCCEEDED", "FAILED"}
_EXECUTION_DONE = {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}


def dataset_key_name(path: str | Path) -> str:
    """A local file's name as the last part of its dataset key: ASCII letters, digits and
    ``._-`` kept, anything else (spaces, accents, ``#``) a ``-``, so that ``houses (1).csv``
    makes a key every s3:// URI check and S3 event takes as written."""
    name = Path(path).name
    return "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in name)


class StackError(RuntimeError):
    """The stack cannot be found or lacks an expected output."""


def execution_arn(state_machine_arn: str, name: str) -> str:
    """The ARN of the execution ``name`` of a state machine (to describe it by name)."""
    return state_machine_arn.replace(":stateMachine:", ":execution:") + f":{name}"


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _job_exists_message(job_id: str) -> str:
    return (
        f"job {job_id!r} already exists; nothing was changed - choose another job id, "
        f"or continue it with: lambdagrad resume {job_id}"
    )


def _cause_message(cause: str | None) -> str:
    """The error message inside an execution's cause (a Lambda error is a JSON document)."""
    if not cause:
        return "execution ended"
    try:
        doc = json.loads(cause)
    except ValueError:
        return cause
    return str(doc.get("errorMessage", cause)) if isinstance(doc, dict) else cause


class JobFailedError(RuntimeError):
    """A job ended in failure; ``error`` is the named error, the message says why."""

    def __init__(self, job_id: str, error: str, message: str) -> None:
        super().__init__(f"job {job_id} failed: {error}: {message}")
        self.job_id, self.error, self.message = job_id, error, message


@dataclass
class StackClient:
    """Talks to one lambdagrad stack through boto3 clients."""

    s3: Any
    sfn: Any
    bucket: str
    state_machine_arn: str
    outputs: dict[str, str] = field(default_factory=dict, repr=False)
    make_client: Callable[[str], Any] | None = field(default=None, repr=False)
    #: ``(path, bucket, key)``: how to upload a file, when not boto3's multipart upload
    put_file: Callable[[Path, str, str], None] | None = field(default=None, repr=False)
    _executions: dict[str, str] = field(default_factory=dict, repr=False)
    _fresh: dict[str, str] = field(default_factory=dict, repr=False)
    _stale: dict[str, set[str]] = field(default_factory=dict, repr=False)
    #: an embedded engine's stack: this process is its only client
    embedded: bool = field(default=False, repr=False)

    @classmethod
    def from_outputs(
        cls, outputs: dict[str, str], make_client: Callable[[str], Any]
    ) -> StackClient:
        """Build from stack Outputs and a ``service -> boto3 client`` factory."""
        try:
            bucket, arn = outputs["BucketName"], outputs["TrainStateMachineArn"]
        except KeyError as exc:
            raise StackError(
                f"stack has no output {exc.args[0]}: is it a lambdagrad stack?"
            ) from None
        return cls(
            make_client("s3"), make_client("stepfunctions"), bucket, arn, outputs, make_client
        )

    @classmethod
    def from_stack(cls, stack_name: str, region: str | None = None) -> StackClient:
        """Find a deployed stack's bucket and state machine by its name."""
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        session = boto3.session.Session(region_name=region)
        if session.region_name is None:
            raise StackError(
                f"no AWS region for stack {stack_name!r}: pass --region REGION, or set "
                "AWS_REGION or a region in your AWS config"
            )
        try:
            stacks = session.client("cloudformation").describe_stacks(StackName=stack_name)
        except (ClientError, BotoCoreError) as exc:
            raise StackError(f"cannot read stack {stack_name!r}: {exc}") from None
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks["Stacks"][0].get("Outputs", [])}
        return cls.from_outputs(outputs, session.client)

    @property
    def store(self) -> Store:
        return Store(self.s3, self.bucket)

    # ---- starting -------------------------------------------------------------------
    def upload_dataset(self, path: Path) -> str:
        """Upload a local dataset under a content-addressed key; return its s3:// URI."""
        # Streamed from disk (hash, then boto3's multipart upload in 8 MB parts, one at a
        # time): the dataset is never whole in this process's memory on the client side.
        from boto3.s3.transfer import TransferConfig

        with Path(path).open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()[:16]
        key = f"datasets/{digest}/{dataset_key_name(path)}"
        if not self.store.exists(key):
            if self.put_file is not None:
                self.put_file(Path(path), self.bucket, key)
            else:
                self.store.client.upload_file(
                    str(path), self.bucket, key, Config=TransferConfig(use_threads=False)
                )
        return f"s3://{self.bucket}/{key}"

    def start(self, spec: JobSpec) -> str:
        """Start the training state machine for a spec that has a job_id; return the id."""
        if not spec.job_id:
            raise ValueError("spec.job_id must be set before starting")
        payload = {"job_id": spec.job_id, "spec": json.loads(spec.model_dump_json())}
        try:
            started = self.sfn.start_execution(
                stateMachineArn=self.state_machine_arn, name=spec.job_id, input=json.dumps(payload)
            )
        except Exception as exc:
            if _error_code(exc) == "ExecutionAlreadyExists":
                raise StackError(_job_exists_message(spec.job_id)) from None
            raise
        self.attach(spec.job_id, started["executionArn"])
        self._fresh[spec.job_id] = started["executionArn"]
        return spec.job_id

    def resume(self, job_id: str) -> dict[str, Any]:
        """Start a new execution that continues ``job_id`` from its last complete checkpoint.

        Refuses a job that is still running, has finished or has no checkpoint
        (:class:`~lambdagrad.resume.ResumeError`). Returns the continuation input.
        """
        from lambdagrad.resume import (
            ResumeError,
            claim_resume,
            continuation_input,
            mark_resuming,
            withdraw_resume,
        )

        JobKeys(job_id)  # a clear error for an invalid id
        running = self.running_executions(job_id)
        if running:
            raise ResumeError(
                f"job {job_id!r} is still running (execution {running[0].rsplit(':', 1)[-1]}); "
                f"follow it with: lambdagrad status {job_id} --follow"
            )
        start = continuation_input(self.store, job_id)
        name = claim_resume(self.store, job_id, start)
        n = int(name.rsplit("-", 1)[-1])
        try:
            if not self.embedded:  # one process owns an embedded stack (and its run dir lock)
                self._refuse_a_racing_resume(job_id, n)
            # a stopped execution's status names it: never mistake its end for the new one's
            if stopped := self.status(job_id).get("execution"):
                self._stale.setdefault(job_id, set()).add(stopped)
            mark_resuming(self.store, job_id, start)
            started = self.sfn.start_execution(
                stateMachineArn=self.state_machine_arn, name=name, input=json.dumps(start)
            )
        except BaseException:  # started nothing (refused, throttled, Ctrl-C): hold none back
            with contextlib.suppress(Exception):
                withdraw_resume(self.store, job_id, n)
            raise
        self.attach(job_id, started["executionArn"])
        return start

    def _refuse_a_racing_resume(self, job_id: str, n: int) -> None:
        """Another resume claimed a lower number moments ago and its execution has not ended
        (or not started yet): that one goes ahead, this one stops before starting anything."""
        from lambdagrad.resume import ResumeError, starting_resumes

        for m, name in starting_resumes(self.store, job_id, below=n):
            arn = execution_arn(self.state_machine_arn, name)
            try:
                status = self.sfn.describe_execution(executionArn=arn)["status"]
            except Exception as exc:
                if _error_code(exc) != "ExecutionDoesNotExist":
                    raise
                status = "STARTING"
            if status in ("STARTING", "RUNNING"):
                raise ResumeError(
                    f"job {job_id!r} is being resumed by another process right now "
                    f"(resume {m}, execution {name}); follow it with: lambdagrad status "
                    f"{job_id} --follow"
                )

    def _running_segments(self) -> list[str]:
        """RUNNING executions of the Express segment machine, where they can be listed: a
        segment outlives a stopped parent. (AWS cannot list Express executions; a segment
        ends within its 5 minutes.)"""
        arn = self.outputs.get("SegmentStateMachineArn")
        if not arn:
            return []
        try:
            listing = self.sfn.list_executions(stateMachineArn=arn, statusFilter="RUNNING")
        except Exception:  # Express state machines are not listable on AWS
            return []
        return [e["executionArn"] for e in listing.get("executions", [])]

    def running_executions(self, job_id: str) -> list[str]:
        """ARNs of this job's RUNNING executions (first, continued or resumed ones)."""
        names = re.compile(rf"^{re.escape(job_id)}(-r\d+|-resume-\d+)?$")
        candidates = set()
        status = self.status(job_id)
        if status.get("execution"):
            candidates.add(status["execution"])
        paginator = self.sfn.get_paginator("list_executions")
        for page in paginator.paginate(
            stateMachineArn=self.state_machine_arn, statusFilter="RUNNING"
        ):
            candidates.update(
                e["executionArn"] for e in page["executions"] if names.match(e["name"])
            )
        candidates.update(self._running_segments())
        running = []
        for arn in sorted(candidates):
            try:
                desc = self.sfn.describe_execution(executionArn=arn)
            except Exception as exc:
                if _error_code(exc) == "ExecutionDoesNotExist":
                    continue
                raise
            if desc["status"] != "RUNNING":
                continue
            try:
                doc = json.loads(desc.get("input") or "{}")
            except ValueError:
                doc = {}
            spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
            if arn == status.get("execution") or job_id in (doc.get("job_id"), spec.get("job_id")):
                running.append(arn)
        return running

    # ---- following ------------------------------------------------------------------
    def status(self, job_id: str) -> dict[str, Any]:
        """The job's status record; PENDING before Prepare writes one (a damaged one is a
        StoreError naming it, not taken for a job that has not started)."""
        try:
            return self.store.get_json(JobKeys(job_id).status)
        except MissingObjectError:
            return {"job_id": job_id, "state": "PENDING"}

    def attach(self, job_id: str, execution_arn: str) -> None:
        """Watch this execution for ``job_id`` until its steps report (a job started elsewhere):
        if it ends before they write a status, ``follow`` still ends, with its error."""
        self._executions[job_id] = execution_arn

    def _execution_failure(self, status: dict[str, Any]) -> tuple[str, str] | None:
        """An execution that ended without its steps recording why (stopped, timed out)."""
        arn = status.get("execution") or self._executions.get(status.get("job_id", ""))
        if not arn:
            return None
        desc = self.sfn.describe_execution(executionArn=arn)
        if desc["status"] in _EXECUTION_DONE and desc["status"] != "SUCCEEDED":
            return desc.get("error") or desc["status"], _cause_message(desc.get("cause"))
        return None

    def as_executed(self, status: dict[str, Any], resume: str) -> dict[str, Any]:
        """``status`` as its execution left it: a job still marked running whose execution
        ended without a record (stopped, timed out: RecordFailure does not run) is FAILED,
        or STOPPED when it was stopped, with how to continue it (``resume``, a command)."""
        if status.get("state") in TERMINAL_STATES or not status.get("execution"):
            return status
        failure = self._execution_failure(status)
        if failure is None:
            return status
        error, message = failure
        stopped = error == "ABORTED"
        why = "its execution was stopped" if stopped else f"its execution ended: {message}"
        return {
            **status,
            "state": "STOPPED" if stopped else "FAILED",
            "error": error,
            "message": f"{why}; continue it with: {resume}",
        }

    def _confirmed(self, job_id: str, status: dict[str, Any]) -> dict[str, Any]:
        """The status of a job this client started, checked against its execution.

        A status written by an earlier execution of the same id (a job that exists, whose
        Prepare's conditional write refuses ours; on the embedded engine that execution can
        even have had our execution's ARN) must not end the wait: our execution's end decides.
        """
        desc = self.sfn.describe_execution(executionArn=self._fresh[job_id])
        if desc["status"] == "RUNNING":
            if self._foreign(status):
                return {"job_id": job_id, "state": "PENDING"}
            return {**status, "state": "RUNNING"}
        if desc["status"] != "SUCCEEDED":
            started = desc["startDate"]
            started = started.timestamp() if hasattr(started, "timestamp") else float(started)
            own = not self._foreign(status) and status.get("updated_at", 0.0) >= started
            if status.get("state") == "FAILED" and own:
                return status  # the job's own failure record (RecordFailure wrote it)
            return {
                "job_id": job_id,
                "state": "FAILED",
                "error": desc.get("error") or desc["status"],
                "message": _cause_message(desc.get("cause")),
            }
        return status

    def _foreign(self, status: dict[str, Any]) -> bool:
        """The status belongs to another execution's job of the same id (ours was refused
        by Prepare's conditional write, or has not claimed the id yet)."""
        mine = self._fresh.get(status.get("job_id", ""))
        owner = status.get("prepared_by")
        return mine is not None and owner is not None and owner != mine

    def follow(
        self,
        job_id: str,
        on_status: Callable[[dict[str, Any]], None] | None = None,
        poll_seconds: float = 0.2,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Poll until the job succeeds (return its status) or fails (raise JobFailedError)."""
        for status in self.iter_status(job_id, poll_seconds, timeout):
            if on_status:
                on_status(status)
        if status["state"] == "FAILED":
            raise JobFailedError(job_id, status.get("error", "Unknown"), status.get("message", ""))
        return status

    def iter_status(
        self, job_id: str, poll_seconds: float = 0.2, timeout: float | None = None
    ) -> Iterator[dict[str, Any]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        checks = 0
        while True:
            status = self.status(job_id)
            if job_id in self._fresh and (
                self._foreign(status) or status.get("state") in TERMINAL_STATES
            ):
                status = self._confirmed(job_id, status)
            elif status.get("state") not in TERMINAL_STATES and status.get(
                "execution"
            ) not in self._stale.get(job_id, ()):
                checks += 1
                if checks % 10 == 0 and (failure := self._execution_failure(status)):
                    status = {
                        **status,
                        "state": "FAILED",
                        "error": failure[0],
                        "message": failure[1],
                    }
            yield status
            if status.get("state") in TERMINAL_STATES:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {status.get('state')} after {timeout} s")
            time.sleep(poll_seconds)

    def output(self, key: str) -> str:
        """A stack output the feature at hand needs (a clear error on an older stack)."""
        if key not in self.outputs:
            raise StackError(f"the stack has no output {key}: redeploy it with this version")
        return self.outputs[key]

    # ---- uploads, sweeps, serving -----------------------------------------------------
    def submit(self, spec_doc: dict[str, Any], name: str) -> str:
        """Upload a spec under jobs/incoming/ (which starts the job); return its job id."""
        from lambdagrad.uploads import INCOMING_PREFIX, upload_job_id

        key = f"{INCOMING_PREFIX}{name}.json"
        put = self.s3.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=json.dumps(spec_doc).encode(),
            ContentType="application/json",
        )
        return upload_job_id(key, put["ETag"])

    def start_sweep(self, sweep_input: dict[str, Any]) -> str:
        sweep_id = sweep_input["sweep_id"]
        try:
            started = self.sfn.start_execution(
                stateMachineArn=self.output("SweepStateMachineArn"),
                name=sweep_id,
                input=json.dumps(sweep_input),
            )
        except Exception as exc:
            if _error_code(exc) == "ExecutionAlreadyExists":
                raise StackError(
                    f"sweep {sweep_id!r} already ran on this stack (its result: "
                    f"s3://{self.bucket}/sweeps/{sweep_id}/result.json); nothing was "
                    "started - choose another --sweep-id"
                ) from None
            raise
        return started["executionArn"]

    def wait_execution(
        self, arn: str, poll_seconds: float = 0.5, timeout: float | None = None
    ) -> dict[str, Any]:
        """Poll an execution until it ends; return its description."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            desc = self.sfn.describe_execution(executionArn=arn)
            if desc["status"] in _EXECUTION_DONE:
                return desc
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{arn} still {desc['status']} after {timeout} s")
            time.sleep(poll_seconds)

    def predict(self, model_name: str, instances: list[Any]) -> dict[str, Any]:
        """Call the deployed predict function (as its function URL would be called)."""
        if self.make_client is None:
            raise StackError("this client cannot reach Lambda")
        body = json.dumps({"model": model_name, "instances": instances})
        request_id = str(uuid.uuid4())
        event = {  # the function URL payload (format 2.0) the handler is written for
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": "/",
            "rawQueryString": "",
            "headers": {"content-type": "application/json"},
            "requestContext": {
                "accountId": "anonymous",
                "http": {
                    "method": "POST",
                    "path": "/",
                    "protocol": "HTTP/1.1",
                    "sourceIp": "127.0.0.1",
                    "userAgent": "lambdagrad",
                },
                "requestId": request_id,
                "routeKey": "$default",
                "stage": "$default",
                "timeEpoch": int(time.time() * 1000),
            },
            "body": body,
            "isBase64Encoded": False,
        }
        try:
            answer = self.make_client("lambda").invoke(
                FunctionName=self.output("PredictFunctionName"), Payload=json.dumps(event).encode()
            )
        except Exception as exc:  # botocore's ClientError: a request too large, throttled, ...
            code = _error_code(exc)
            if not code:
                raise
            raise StackError(f"predict function could not be called: {code}: {exc}") from None
        payload = json.loads(answer["Payload"].read())
        if answer.get("FunctionError"):
            raise StackError(f"predict function failed: {payload.get('errorMessage', payload)}")
        doc = json.loads(payload.get("body") or "{}")
        if payload.get("statusCode", 200) >= 400:
            raise StackError(f"predict: {doc.get('error', payload)}")
        return doc

    # ---- results --------------------------------------------------------------------
    def model_files(self, job_id: str) -> dict[str, bytes]:
        """model.npz, model.json and history.csv of a finished job."""
        keys = JobKeys(job_id)
        return {
            "model.npz": self.store.get_bytes(keys.model_npz),
            "model.json": self.store.get_bytes(keys.model_json),
            "history.csv": self.store.get_bytes(keys.history),
        }
