"""The embedded engine: deploy a SAM template into moto in-process and run its state machines.

The same ``template.yaml`` and ASL that ``sam deploy`` ships run here: the template is
transformed to CloudFormation (:mod:`lambdagrad.local.sam`), created as a moto stack, and
its state machines execute in moto's ASL interpreter with the real handlers called in process
(:mod:`lambdagrad.local.invoker`), thanks to the patches in :mod:`lambdagrad.local.moto_fixes`.

Inside the engine, the process talks to moto only: dummy credentials and the engine's region
are forced into the environment (and restored on exit), shared AWS config files and custom
endpoints are hidden, and every boto3 call is intercepted by moto.

moto's mock is process-wide: engines running at the same time share it (same region, one
stack each), and the last one to stop tears it down.

Example
-------
>>> with LocalEngine("template.yaml") as engine:                  # doctest: +SKIP
...     sfn = engine.client("stepfunctions")
...     arn = engine.outputs["TrainStateMachineArn"]
...     sfn.start_execution(stateMachineArn=arn, name="job-1", input="{}")
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .sam import TemplateError, load_template, localize, to_cloudformation

if TYPE_CHECKING:
    from .chaos import Chaos

LOG = logging.getLogger(__name__)

#: Account id moto uses by default.
ACCOUNT_ID = "123456789012"

#: Bucket that receives the placeholder code zips.
STAGING_BUCKET = "lambdagrad-local-code"

#: Environment set for the whole engine session (dummy credentials: never reach real AWS).
_FORCED_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}

#: Environment variables removed for the session (they could point boto3 at real endpoints).
_HIDDEN_ENV_PREFIXES = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_",
)

#: Applied after each function's own variables: local runs neither trace nor flush metrics.
LOCAL_FUNCTION_ENV = {
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_METRICS_DISABLED": "true",
    # handlers reach moto's S3 directly (lambdagrad.local.moto_fixes.InProcessS3Client)
    "LAMBDAGRAD_LOCAL_S3": "in-process",
}


class _MotoSession:
    """Process-wide state shared by the running engines: moto's mock, environment, logs.

    moto's backends are global to the process, so engines share one mock: the first engine
    to start enters it (dummy credentials, fixes, ``mock_aws``), the last to stop leaves it
    and restores ``os.environ``. Each engine deploys its own stack into it.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.engines: list[LocalEngine] = []
        self.region: str | None = None
        self._mock: Any = None
        self._saved_env: dict[str, str] | None = None
        self._moto_log: tuple[logging.Logger, bool, logging.Handler] | None = None
        self._saved_filters: list[Any] | None = None

    def join(self, engine: LocalEngine) -> None:
        with self.lock:
            if self.engines:
                if engine.region != self.region:
                    raise RuntimeError(
                        f"a LocalEngine in region {self.region} is running; engines in one "
                        "process share moto and must use the same region"
                    )
                clash = [e for e in self.engines if e.stack_name == engine.stack_name]
                if clash:
                    raise RuntimeError(f"a LocalEngine with stack {engine.stack_name} is running")
                self._force_environment(engine)
                self.engines.append(engine)
                return
            self._enter(engine)
            self.engines.append(engine)

    def others(self, engine: LocalEngine) -> bool:
        """Whether engines other than ``engine`` are running."""
        with self.lock:
            return any(e is not engine for e in self.engines)

    def leave(self, engine: LocalEngine) -> None:
        """Remove ``engine``; tear everything down if it was the last."""
        with self.lock:
            if engine in self.engines:
                self.engines.remove(engine)
            if not self.engines:
                self._exit()

    def _enter(self, engine: LocalEngine) -> None:
        from moto import mock_aws

        from . import moto_fixes
        from .invoker import get_invoker

        self.region = engine.region
        self._saved_env = dict(os.environ)
        self._force_environment(engine)
        self._saved_filters = list(warnings.filters)
        # Powertools warns after every handler that recorded no metric; locally metrics are
        # disabled anyway.
        warnings.filterwarnings("ignore", message="No application metrics to publish")
        try:
            moto_fixes.apply_all()
            moto_fixes.clear_client_cache()
            get_invoker().reset()
            self._quiet_moto_logs(engine.log_path)
            self._mock = mock_aws(
                config={
                    "stepfunctions": {"execute_state_machine": True},
                    "lambda": {"use_docker": False},
                    "core": {"mock_credentials": True, "reset_boto3_session": True},
                }
            )
            self._mock.start()
        except BaseException:
            self._exit()
            raise

    @staticmethod
    def _force_environment(engine: LocalEngine) -> None:
        """Dummy credentials, the engine's region, no profile or endpoint that leads elsewhere."""
        for key in list(os.environ):
            if key.startswith(_HIDDEN_ENV_PREFIXES):
                del os.environ[key]
        os.environ.update(_FORCED_ENV)
        os.environ["AWS_DEFAULT_REGION"] = os.environ["AWS_REGION"] = engine.region
        os.environ.update(LOCAL_FUNCTION_ENV)
        if engine.log_path is None and "POWERTOOLS_LOG_LEVEL" not in os.environ:
            os.environ["POWERTOOLS_LOG_LEVEL"] = "WARNING"

    def _exit(self) -> None:
        from . import moto_fixes
        from .invoker import get_invoker

        try:
            get_invoker().close()
            moto_fixes.clear_client_cache()
            if self._mock is not None:
                mock, self._mock = self._mock, None
                mock.stop()
        finally:
            self._restore_moto_logs()
            if self._saved_filters is not None:
                warnings.filters[:] = self._saved_filters
                mutated = getattr(warnings, "_filters_mutated", None)  # invalidate the caches
                if mutated is not None:
                    mutated()
                self._saved_filters = None
            if self._saved_env is not None:
                os.environ.clear()
                os.environ.update(self._saved_env)
                self._saved_env = None
            self.region = None

    def _quiet_moto_logs(self, log_path: Path | None) -> None:
        """moto's ASL interpreter logs a traceback for every failed state: keep it off the terminal.

        While engines run, the ``moto`` logger writes to the first engine's ``log_path`` (or
        nowhere) instead of propagating to the application's handlers; the execution history
        has the same error and cause.
        """
        moto_logger = logging.getLogger("moto")
        handler: logging.Handler
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(log_path, encoding="utf-8")
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
            )
        else:
            handler = logging.NullHandler()
        self._moto_log = (moto_logger, moto_logger.propagate, handler)
        moto_logger.addHandler(handler)
        moto_logger.propagate = False

    def _restore_moto_logs(self) -> None:
        if self._moto_log is None:
            return
        moto_logger, propagate, handler = self._moto_log
        moto_logger.removeHandler(handler)
        moto_logger.propagate = propagate
        handler.close()
        self._moto_log = None


_SESSION = _MotoSession()


class DeployError(Exception):
    """The stack could not be created in moto."""


class LocalEngine:
    """Deploy a SAM template into moto in-process and run its state machines with the real handlers.

    Parameters
    ----------
    template
        Path of the SAM (or plain CloudFormation) template. Relative ``CodeUri``,
        ``ContentUri`` and ``DefinitionUri`` are resolved against its folder.
    region
        Region of the mock account (``123456789012``).
    stack_name
        Name of the CloudFormation stack created in moto.
    parameters
        Template parameter overrides (``ParameterKey -> value``).
    log_path
        File that receives what handlers print or log. Without it, handler logs stay on
        stdout but Powertools is set to ``WARNING``.
    state_dir
        Keep the stack's buckets on disk here (:mod:`lambdagrad.local.mirror`): what it holds
        is loaded into the fresh buckets on start, and every later write is mirrored to it
        (per-round gradient scratch excepted), so checkpoints outlive the process. The
        directory is locked while the engine runs.
    restore
        Which mirrored keys to load on start (default: all). A new job needs only the
        claims of earlier ones (so their ids stay taken), not their data and checkpoints.
    retry_delay_scale
        Multiply the waits between ASL retries by this factor while the engine runs (``0``:
        retry at once). ``None`` (the default) keeps the real waits of the state machine
        (``IntervalSeconds``, ``BackoffRate``, jitter), as AWS would; fault-injection runs
        and tests pass a small factor. The factor is process-wide: engines share moto.

    Attributes
    ----------
    outputs
        The stack's ``Outputs`` by key, e.g. ``BucketName``.
    resources
        Physical id of every stack resource by logical id (functions -> function name,
        state machines -> ARN, buckets -> bucket name).

    Examples
    --------
    >>> with LocalEngine("tests/fixtures/engine/template.yaml") as eng:   # doctest: +SKIP
    ...     eng.fail_next("WorkFunction", times=2)          # two throttles, then success
    ...     eng.client("s3").list_objects_v2(Bucket=eng.outputs["BucketName"])
    """

    def __init__(
        self,
        template: str | Path,
        *,
        region: str = "us-east-1",
        stack_name: str = "lambdagrad-local",
        parameters: dict[str, Any] | None = None,
        log_path: Path | None = None,
        state_dir: str | Path | None = None,
        retry_delay_scale: float | None = None,
        restore: Callable[[str], bool] | None = None,
    ):
        self.template_path = Path(template).resolve()
        self.region = region
        self.stack_name = stack_name
        self.parameters = {k: str(v) for k, v in (parameters or {}).items()}
        self.log_path = Path(log_path) if log_path is not None else None
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._restore = restore
        self._mirror: Any = None
        self.outputs: dict[str, str] = {}
        self.resources: dict[str, str] = {}
        self.resource_types: dict[str, str] = {}
        self.cloudformation_template: dict[str, Any] = {}
        #: Resource types of the template that moto's CloudFormation does not create.
        self.unsupported_resource_types: set[str] = set()
        self._started = False
        self._clients: dict[str, Any] = {}
        self._session: Any = None
        self._lock = threading.Lock()
        self._retry_delay_scale = retry_delay_scale
        self._saved_retry_delay_scale: float | None = None

    # ---------------------------------------------------------------- context manager
    def __enter__(self) -> LocalEngine:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._started

    def start(self) -> None:
        """Start moto (unless another engine did), apply the fixes and deploy the template.

        Several engines can run at once in one process: they share moto's mock (and so the
        region), each with its own stack; the environment is restored when the last stops.
        """
        if self._started:
            raise RuntimeError("engine already started")
        # Everything that can be checked offline is checked before any global state changes.
        _, artifacts, cfn = self._prepare_template()
        if self.state_dir is not None:
            from .mirror import BucketMirror

            self._mirror = BucketMirror(self.state_dir, restore=self._restore)
            self._mirror.lock()  # before anything changes: a second process is refused here
        try:
            _SESSION.join(self)
        except BaseException:
            self._close_mirror()
            raise
        self._started = True
        try:
            self._deploy(artifacts, cfn)
            self._configure_functions()
            if self._mirror is not None:
                self._mirror.attach(self.buckets(), self.client("s3"))
            if self._retry_delay_scale is not None:
                self.set_retry_delay_scale(self._retry_delay_scale)
        except BaseException:
            self.stop()
            raise

    def buckets(self) -> dict[str, str]:
        """The stack's buckets: physical name -> logical id."""
        return {
            self.resources[k]: k
            for k, t in self.resource_types.items()
            if t == "AWS::S3::Bucket" and k in self.resources
        }

    def _close_mirror(self) -> None:
        if self._mirror is not None:
            mirror, self._mirror = self._mirror, None
            mirror.close()

    def _prepare_template(self) -> tuple[dict[str, Any], list[Any], dict[str, Any]]:
        template = load_template(self.template_path)
        localized, artifacts = localize(
            template, base_dir=self.template_path.parent, staging_bucket=STAGING_BUCKET
        )
        cfn = to_cloudformation(localized, region=self.region, parameters=self.parameters)
        unknown = sorted(set(self.parameters) - set(cfn.get("Parameters", {})))
        if unknown:
            raise TemplateError(f"unknown template parameters: {unknown}")
        return localized, artifacts, cfn

    def _function_names(self) -> list[str]:
        return [
            self.resources[k]
            for k, t in self.resource_types.items()
            if t == "AWS::Lambda::Function" and k in self.resources
        ]

    def _configure_functions(self) -> None:
        from .invoker import get_invoker

        env = dict(LOCAL_FUNCTION_ENV)
        env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = self.region
        if self.log_path is None:
            env["POWERTOOLS_LOG_LEVEL"] = "WARNING"
        get_invoker().configure(self._function_names(), env=env, log_path=self.log_path)

    def stop(self) -> None:
        """Stop this engine's executions and forget its stack; the last engine stops moto."""
        from .invoker import get_invoker

        if not self._started:
            return
        try:
            self._stop_running_executions()
            self._close_mirror()
            get_invoker().forget(self._function_names())
            if _SESSION.others(self):
                self._delete_stack()
        finally:
            self._close_mirror()
            if self._saved_retry_delay_scale is not None:
                from . import moto_fixes

                moto_fixes.set_retry_delay_scale(self._saved_retry_delay_scale)
                self._saved_retry_delay_scale = None
            self._clients.clear()
            self._session = None
            self._started = False
            _SESSION.leave(self)

    def _delete_stack(self) -> None:
        """Other engines keep moto running: remove this stack so its name can be reused."""
        try:
            self.client("cloudformation").delete_stack(StackName=self.stack_name)
        except Exception:  # best effort while tearing down
            LOG.debug("could not delete stack %s", self.stack_name, exc_info=True)

    # ----------------------------------------------------------------------- clients
    def put_file(self, path: Path, bucket: str, key: str) -> None:
        """Store a local file as an object in one copy: moto assembling a multipart upload
        holds the object several times over, which for a large dataset is most of a run's
        peak memory."""
        from .moto_fixes import in_process_s3_client

        in_process_s3_client(self.region).put_object(
            Bucket=bucket, Key=key, Body=Path(path).read_bytes()
        )

    def client(self, service: str) -> Any:
        """A boto3 client bound to moto (one per service, thread-safe to share)."""
        if not self._started:
            raise RuntimeError("engine is not running (use it as a context manager)")
        with self._lock:
            client = self._clients.get(service)
            if client is None:
                import boto3

                if self._session is None:
                    self._session = boto3.session.Session(
                        aws_access_key_id="testing",
                        aws_secret_access_key="testing",
                        aws_session_token="testing",
                        region_name=self.region,
                    )
                client = self._session.client(service, region_name=self.region)
                self._clients[service] = client
            return client

    # ------------------------------------------------------------------------ deploy
    def _deploy(self, artifacts: list[Any], cfn: dict[str, Any]) -> None:
        from .invoker import make_code_zip

        s3 = self.client("s3")
        create: dict[str, Any] = {"Bucket": STAGING_BUCKET}
        if self.region != "us-east-1":
            create["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            s3.create_bucket(**create)
        except s3.exceptions.ClientError as exc:  # another engine made it
            if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou",):
                raise
        for art in artifacts:
            s3.put_object(Bucket=art.bucket, Key=art.key, Body=make_code_zip(art.source))
        self.cloudformation_template = cfn
        with self._unsupported_resource_warnings():
            self._create_stack(cfn)
        if self.unsupported_resource_types:
            LOG.info("moto skipped resources of types %s", sorted(self.unsupported_resource_types))
        self._enable_bucket_eventbridge(cfn)

    @contextlib.contextmanager
    def _unsupported_resource_warnings(self) -> Iterator[None]:
        """Collect moto's "not supported by moto's CloudFormation" warnings (e.g. for
        ``AWS::S3::BucketPolicy``, irrelevant locally) instead of printing one per API call."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for w in caught:
            found = re.search(r"parse (\S+) but it's not supported", str(w.message))
            if found:
                self.unsupported_resource_types.add(found.group(1))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def _create_stack(self, cfn: dict[str, Any]) -> None:
        cf = self.client("cloudformation")
        try:
            cf.create_stack(
                StackName=self.stack_name,
                TemplateBody=json.dumps(cfn),
                Parameters=[
                    {"ParameterKey": k, "ParameterValue": v} for k, v in self.parameters.items()
                ],
                Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
            )
        except Exception as exc:
            raise DeployError(f"moto could not create stack {self.stack_name}: {exc}") from exc
        waiter = cf.get_waiter("stack_create_complete")
        try:
            waiter.wait(StackName=self.stack_name, WaiterConfig={"Delay": 0.05, "MaxAttempts": 200})
        except Exception as exc:
            events = cf.describe_stack_events(StackName=self.stack_name)["StackEvents"]
            failed = [
                f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason', '')}"
                for e in events
                if e["ResourceStatus"].endswith("FAILED")
            ]
            raise DeployError(f"stack {self.stack_name} not created: {failed or exc}") from exc
        stack = cf.describe_stacks(StackName=self.stack_name)["Stacks"][0]
        self.outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        paginator = cf.get_paginator("list_stack_resources")
        for page in paginator.paginate(StackName=self.stack_name):
            for r in page["StackResourceSummaries"]:
                if not r["LogicalResourceId"]:  # a resource type moto skipped
                    continue
                self.resources[r["LogicalResourceId"]] = r["PhysicalResourceId"]
                self.resource_types[r["LogicalResourceId"]] = r["ResourceType"]

    def _enable_bucket_eventbridge(self, cfn: dict[str, Any]) -> None:
        """Apply the buckets' EventBridge notifications (moto's CFN ignores them)."""
        s3 = self.client("s3")
        for logical_id, res in cfn.get("Resources", {}).items():
            if res.get("Type") != "AWS::S3::Bucket":
                continue
            conf = res.get("Properties", {}).get("NotificationConfiguration", {})
            enabled = conf.get("EventBridgeConfiguration", {}).get("EventBridgeEnabled")
            if enabled in (True, "true", "True") and logical_id in self.resources:
                s3.put_bucket_notification_configuration(
                    Bucket=self.resources[logical_id],
                    NotificationConfiguration={"EventBridgeConfiguration": {}},
                )

    # ---------------------------------------------------------------------- testing
    def function_name(self, logical_id: str) -> str:
        """Physical name of the function ``logical_id`` (a physical name is returned as is)."""
        if self.resource_types.get(logical_id) == "AWS::Lambda::Function":
            return self.resources[logical_id]
        if logical_id in self.resources.values():
            return logical_id
        functions = sorted(
            k for k, t in self.resource_types.items() if t == "AWS::Lambda::Function"
        )
        raise KeyError(f"no function {logical_id!r} in the stack (functions: {functions})")

    def fail_next(
        self, function_logical_id: str, times: int = 1, error: str = "TooManyRequestsException"
    ) -> None:
        """Fail the next ``times`` invocations of a function as a transient Lambda service error.

        The state machine sees ``Lambda.<error>`` (``Lambda.TooManyRequestsException`` by
        default; ``ServiceException`` gives ``Lambda.ServiceException``), so its ``Retry``
        applies. The handler does not run for a failed invocation.
        """
        from .invoker import get_invoker

        get_invoker().fail_next(self.function_name(function_logical_id), times, error)

    def fail_matching(
        self,
        function_logical_id: str,
        match: dict[str, Any],
        fault: Any = None,
        times: int | None = None,
    ) -> None:
        """Fail the invocations of a function whose event has the fields of ``match``.

        A straggler that never recovers: ``engine.fail_matching("WorkerFunction", {"round":
        2, "shard": 1})`` times that worker out on every attempt (a
        :class:`~lambdagrad.local.chaos.Fault` chooses another failure), so its retries run
        out and the execution fails with the fault's error name. With ``times``, only the
        first ``times`` matching invocations fail.
        """
        from .invoker import get_invoker

        get_invoker().fail_matching(self.function_name(function_logical_id), match, fault, times)

    def start_chaos(
        self,
        fraction: float,
        *,
        seed: int = 0,
        functions: tuple[str, ...] = ("WorkerFunction", "ReduceFunction"),
        kinds: tuple[str, ...] | None = None,
    ) -> Chaos:
        """Fail ``fraction`` of the invocations of ``functions`` (logical ids) from now on.

        Transient service errors, timeouts and crashes after the outputs were written, chosen
        reproducibly from ``seed`` (see :mod:`lambdagrad.local.chaos`). The returned object
        counts what it injected; :meth:`reset` (or :meth:`stop_chaos`) ends it.
        """
        from .chaos import FAULT_KINDS, Chaos
        from .invoker import get_invoker

        chaos = Chaos(
            fraction,
            seed=seed,
            functions={self.function_name(f): f for f in functions},
            kinds=kinds or FAULT_KINDS,
        )
        get_invoker().set_chaos(chaos)
        return chaos

    def stop_chaos(self) -> None:
        """Stop injecting chaos faults."""
        from .invoker import get_invoker

        get_invoker().set_chaos(None)

    def set_retry_delay_scale(self, scale: float) -> float:
        """Scale the waits between ASL retries (process-wide) until this engine stops.

        Returns the previous factor. See the ``retry_delay_scale`` parameter.
        """
        from . import moto_fixes

        previous = moto_fixes.set_retry_delay_scale(scale)
        if self._saved_retry_delay_scale is None:
            self._saved_retry_delay_scale = previous
        return previous

    def invocations(self, function_logical_id: str) -> int:
        """How many times the function was invoked (including injected failures)."""
        from .invoker import get_invoker

        return get_invoker().invocations.get(self.function_name(function_logical_id), 0)

    def _state_machines(self) -> list[Any]:
        from moto.stepfunctions.responses import get_backend

        own = {
            self.resources[k]
            for k, t in self.resource_types.items()
            if t == "AWS::StepFunctions::StateMachine" and k in self.resources
        }
        backend = get_backend(ACCOUNT_ID, self.region)
        return [sm for sm in backend.state_machines if sm.arn in own]

    def reset(self) -> None:
        """Forget this stack's finished executions, injected faults and invocation counts.

        moto keeps every execution (and its event history) forever; call this between jobs.
        """
        from .invoker import get_invoker

        for sm in self._state_machines():
            sm.executions[:] = [e for e in sm.executions if e.status == "RUNNING"]
        get_invoker().clear_faults(self._function_names())

    def _stop_running_executions(self) -> None:
        try:
            from moto.stepfunctions.responses import get_backend

            backend = get_backend(ACCOUNT_ID, self.region)
            for sm in self._state_machines():
                for execution in list(sm.executions):
                    if execution.status == "RUNNING":
                        backend.stop_execution(execution.execution_arn)
        except Exception:  # best effort while tearing down
            LOG.debug("could not stop running executions", exc_info=True)
