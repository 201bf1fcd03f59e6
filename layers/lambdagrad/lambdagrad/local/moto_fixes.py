"""Patches to moto's internals that the embedded engine relies on (measured on moto 5.2.5).

Every patch is one ``fix_*`` function whose docstring says what moto does wrong and why we
need it; :func:`apply_all` applies them all and is idempotent. Each patch touches private moto
code, so ``tests/unit/test_moto_fixes.py`` checks, for every one, that the patched function
still exists with the signature we expect and that the behaviour works through boto3: a moto
upgrade that changes any of them fails those tests loudly instead of breaking training runs.

The patches are process-wide and stay applied; they only change behaviour that moto 5.2.5
gets wrong or leaves unimplemented (plus four pure speed-ups), so other moto users in the
same process see AWS-like behaviour, not a different one. Exception: once patched, a Lambda
function without a canned result queued (moto's ``lambda-simple`` response queue) runs its
real handler in process.

=====================================  ==================================================
fix                                    moto 5.2.5 defect
=====================================  ==================================================
fix_state_machine_cloudformation       CFN state machines don't execute, no substitutions
fix_lambda_invoke_in_process           Lambda (no Docker) returns a canned string
fix_task_lambda_service_error_names    ``Resource: <function ARN>`` names API errors
                                       ``Exception``, not ``Lambda.<Code>``
fix_sfn_start_execution_shapes         ``states:startExecution`` KeyError (stubbed shapes)
fix_execution_default_name             unnamed executions are all called ``None``
fix_events_states_targets              EventBridge -> state machine not implemented
fix_layer_version_ref                  ``!Ref`` of a layer version is a Python object
fix_boto_client_cache                  speed: a new boto3 client per task
fix_json_path_parse_cache              speed: JSONPath re-parsed per evaluation
fix_tmp_threads_leak                   speed/memory: every thread kept forever
fix_s3_url_module_reload               speed: ``moto.s3.urls`` reloaded per S3 request
fix_s3_overwrite_while_reading         overwriting a key breaks a GET in flight
fix_s3_value_spills_in_chunks          memory: a large object is copied twice in memory
                                       before it spills to disk
fix_retry_delay_scale                  ASL retry waits always sleep for real (tests and
                                       chaos runs scale them)
fix_sync_poll_backoff                  speed: ``.sync`` polls the child every 0.5 s;
                                       a retried ``.sync`` task times out at once
=====================================  ==================================================

Example
-------
>>> from lambdagrad.local import moto_fixes
>>> moto_fixes.apply_all()
>>> moto_fixes.applied()[:2]
['state_machine_cloudformation', 'lambda_invoke_in_process']
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import importlib
import io
import json
import logging
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

LOG = logging.getLogger(__name__)

#: The moto version these patches were written against (pyproject pins it exactly).
MOTO_VERSION = "5.2.5"

_PARSER = "moto.stepfunctions.parser"
_TASK = f"{_PARSER}.asl.component.state.exec.state_task"

#: Modules that bind ``boto_client_for`` by name (``from ... import boto_client_for``).
BOTO_CLIENT_FOR_USERS = (
    f"{_PARSER}.asl.component.state.exec.state_map.result_writer.resource_eval.resource_eval_s3",
    f"{_PARSER}.asl.component.state.exec.state_map.item_reader.eval.resource_eval_s3",
    f"{_TASK}.lambda_eval_utils",
    f"{_TASK}.service.state_task_service_unsupported",
    f"{_TASK}.service.state_task_service_glue",
    f"{_TASK}.service.state_task_service_events",
    f"{_TASK}.service.state_task_service_ecs",
    f"{_TASK}.service.state_task_service_sqs",
    f"{_TASK}.service.state_task_service_sfn",
    f"{_TASK}.service.state_task_service_dynamodb",
    f"{_TASK}.service.state_task_service_batch",
    f"{_TASK}.service.state_task_service_sns",
    f"{_TASK}.service.state_task_service_aws_sdk",
)

#: Modules that bind ``TMP_THREADS`` by name (``from moto.stepfunctions.parser.utils import``).
TMP_THREADS_USERS = (
    f"{_PARSER}.asl.component.program.program",
    f"{_PARSER}.asl.component.test_state.program.test_state_program",
    f"{_PARSER}.asl.component.state.exec.state_map.iteration.inline_iteration_component",
    f"{_TASK}.service.state_task_service_callback",
    f"{_PARSER}.asl.component.state.exec.state_parallel.branch_worker",
    f"{_PARSER}.asl.component.state.exec.execute_state",
    f"{_PARSER}.backend.execution_worker",
)

_lock = threading.RLock()
_applied: list[str] = []
_version_warned = False


class MotoVersionWarning(UserWarning):
    """The installed moto is not the version these patches were written for."""


def applied() -> list[str]:
    """Names of the fixes applied so far, in order."""
    return list(_applied)


def _once(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Make a fix idempotent and record it under ``name``."""

    def deco(fn: Callable[[], None]) -> Callable[[], None]:
        @functools.wraps(fn)
        def wrapper() -> None:
            with _lock:
                if name in _applied:
                    return
                fn()
                _applied.append(name)

        wrapper.fix_name = name  # type: ignore[attr-defined]
        return wrapper

    return deco


def _rebind(module_names: tuple[str, ...], attr: str, old: Any, new: Any) -> None:
    """Replace ``old`` by ``new`` in the listed modules and any loaded parser module."""
    for name in module_names:
        importlib.import_module(name)
    for name, module in list(sys.modules.items()):
        if name.startswith(_PARSER) and module is not None and getattr(module, attr, None) is old:
            setattr(module, attr, new)


def _substitute(definition: str, substitutions: dict[str, Any] | None) -> str:
    """Replace ``${Key}`` by its value, as CloudFormation's ``DefinitionSubstitutions`` does."""
    for key, value in (substitutions or {}).items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        definition = definition.replace("${" + str(key) + "}", str(value))
    return definition


def _cfn_definition(properties: dict[str, Any], account_id: str, region_name: str) -> str:
    """The ASL text of an ``AWS::StepFunctions::StateMachine``, substitutions applied."""
    if "DefinitionString" in properties:
        definition = properties["DefinitionString"]
    elif "Definition" in properties:
        definition = json.dumps(properties["Definition"])
    elif "DefinitionS3Location" in properties:
        from moto.s3.models import s3_backends
        from moto.utilities.utils import get_partition

        loc = properties["DefinitionS3Location"]
        key = s3_backends[account_id][get_partition(region_name)].get_object(
            loc["Bucket"], loc["Key"], version_id=loc.get("Version")
        )
        definition = key.value.decode("utf-8")  # type: ignore[union-attr]
    else:
        definition = ""
    return _substitute(definition, properties.get("DefinitionSubstitutions"))


# --------------------------------------------------------------------------- fixes


@_once("state_machine_cloudformation")
def fix_state_machine_cloudformation() -> None:
    """State machines from CloudFormation: executing backend + ``DefinitionSubstitutions``.

    moto's ``StateMachine.{create,update,delete}_from_cloudformation_json`` always use the
    plain ``stepfunctions_backends``, which never runs executions, even when the mock is
    configured with ``stepfunctions.execute_state_machine``; and they ignore
    ``DefinitionSubstitutions`` (and ``Definition``/``DefinitionS3Location``,
    ``StateMachineType``). The replacements go through
    ``moto.stepfunctions.responses.get_backend`` (the backend the API uses), substitute
    ``${Name}`` and keep moto's ARN scheme, so ``!Ref`` in outputs and rule targets names
    the machine that actually executes.
    """
    from moto.stepfunctions import responses
    from moto.stepfunctions.models import StateMachine
    from moto.stepfunctions.utils import cfn_to_api_tags

    def create_from_cloudformation_json(
        cls: type,
        resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> Any:
        properties = cloudformation_json["Properties"]
        backend = responses.get_backend(account_id, region_name)
        return backend.create_state_machine(
            properties.get("StateMachineName", resource_name),
            _cfn_definition(properties, account_id, region_name),
            properties.get("RoleArn", ""),
            tags=cfn_to_api_tags(properties.get("Tags", [])),
            sm_type=properties.get("StateMachineType"),
        )

    def delete_from_cloudformation_json(
        cls: type,
        resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
    ) -> None:
        responses.get_backend(account_id, region_name).delete_state_machine(resource_name)

    def update_from_cloudformation_json(
        cls: type,
        original_resource: Any,
        new_resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
    ) -> Any:
        properties = cloudformation_json.get("Properties", {})
        name = properties.get("StateMachineName", original_resource.name)
        backend = responses.get_backend(account_id, region_name)
        if name != original_resource.name:
            cloudformation_json["Properties"] = original_resource.get_cfn_properties(properties)
            new = cls.create_from_cloudformation_json(  # type: ignore[attr-defined]
                name, cloudformation_json, account_id, region_name
            )
            cls.delete_from_cloudformation_json(  # type: ignore[attr-defined]
                original_resource.arn, cloudformation_json, account_id, region_name
            )
            return new
        has_definition = any(
            k in properties for k in ("DefinitionString", "Definition", "DefinitionS3Location")
        )
        state_machine = backend.update_state_machine(
            original_resource.arn,
            definition=(
                _cfn_definition(properties, account_id, region_name) if has_definition else None
            ),
            role_arn=properties.get("RoleArn"),
        )
        backend.tagger.tag_resource(state_machine.arn, cfn_to_api_tags(properties.get("Tags", [])))
        return state_machine

    create_from_cloudformation_json.stock = StateMachine.create_from_cloudformation_json  # type: ignore[attr-defined]
    delete_from_cloudformation_json.stock = StateMachine.delete_from_cloudformation_json  # type: ignore[attr-defined]
    update_from_cloudformation_json.stock = StateMachine.update_from_cloudformation_json  # type: ignore[attr-defined]
    StateMachine.create_from_cloudformation_json = classmethod(create_from_cloudformation_json)  # type: ignore[method-assign,assignment]
    StateMachine.delete_from_cloudformation_json = classmethod(delete_from_cloudformation_json)  # type: ignore[method-assign,assignment]
    StateMachine.update_from_cloudformation_json = classmethod(update_from_cloudformation_json)  # type: ignore[method-assign,assignment]


@_once("lambda_invoke_in_process")
def fix_lambda_invoke_in_process() -> None:
    """Lambda without Docker runs the real handler in this process.

    ``moto.awslambda_simple.models.LambdaSimpleBackend.invoke`` returns a canned string (the
    request body or "Simple Lambda happy path OK"), so a state machine never runs any code.
    The replacement imports the function's handler and calls it
    (:class:`lambdagrad.local.invoker.InProcessInvoker`), reporting a handler exception the way
    Lambda does -- status 200, header ``x-amz-function-error: Unhandled`` and body
    ``{"errorType", "errorMessage", "stackTrace"}`` -- because that is what the ASL
    interpreter turns into the error name that ``Retry``/``Catch`` match (a raw exception
    would become ``States.Runtime``). Injected service faults are raised as a Lambda
    ``ClientError`` (e.g. 429 ``TooManyRequestsException``), which Step Functions reports as
    ``Lambda.TooManyRequestsException``; injected timeouts and crashes come back as the error
    documents Lambda returns for them (``Sandbox.Timedout``, ``Runtime.ExitError``). A canned
    result queued through moto's documented ``lambda-simple`` API still takes precedence.
    """
    from moto.awslambda.exceptions import LambdaClientError
    from moto.awslambda_simple.models import LambdaSimpleBackend

    from .invoker import SERVICE_ERROR_STATUS, get_invoker

    stock_invoke = LambdaSimpleBackend.invoke

    class InjectedServiceError(LambdaClientError):
        def __init__(self, error: str, function_name: str):
            super().__init__(error, f"Injected {error} for function {function_name} (local engine)")
            self.code = SERVICE_ERROR_STATUS.get(error, 500)

    def invoke(
        self: Any,
        function_name: str,
        qualifier: str | None,
        body: Any,
        headers: Any,
        response_headers: Any,
    ) -> str | bytes | None:
        if self.lambda_simple_results_queue:
            return stock_invoke(self, function_name, qualifier, body, headers, response_headers)
        fn = self.get_function(function_name, qualifier)
        invoker = get_invoker()
        fault = invoker.admit(fn.function_name, body)
        if fault is not None and fault.before_handler:
            raise InjectedServiceError(fault.error, fn.function_name)
        raw = body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else body
        try:
            json.loads(raw or "{}")
        except ValueError:
            bad = LambdaClientError(
                "InvalidRequestContentException", "Could not parse request body into json"
            )
            bad.code = 400
            raise bad from None
        invocation_type = (headers or {}).get("X-Amz-Invocation-Type") or (headers or {}).get(
            "x-amz-invocation-type", "RequestResponse"
        )
        if invocation_type == "DryRun":
            return b""
        if invocation_type == "Event":
            threading.Thread(
                target=invoker.invoke,
                args=(fn, qualifier, body, headers, fault),
                name=f"lambda-event-{fn.function_name}",
                daemon=True,
            ).start()
            return b""
        payload, errored = invoker.invoke(fn, qualifier, body, headers, fault)
        if errored:
            response_headers["x-amz-function-error"] = "Unhandled"
        response_headers["x-amz-executed-version"] = (
            "$LATEST" if qualifier in (None, "") else str(qualifier)
        )
        return payload

    invoke.__doc__ = stock_invoke.__doc__
    invoke.stock = stock_invoke  # type: ignore[attr-defined]
    LambdaSimpleBackend.invoke = invoke  # type: ignore[method-assign]


@_once("task_lambda_service_error_names")
def fix_task_lambda_service_error_names() -> None:
    """A Lambda service error in a ``Resource: <function ARN>`` task is ``Lambda.<Code>``.

    moto's ``StateTaskLambda._from_error`` names every ``ClientError`` from the Lambda API
    plain ``Exception``; AWS (and moto's own ``arn:aws:states:::lambda:invoke`` integration)
    name it ``Lambda.<Code>``, e.g. ``Lambda.TooManyRequestsException``, which is what a
    ``Retry`` for transient Lambda errors matches. Handler errors are not affected.
    """
    from botocore.exceptions import ClientError
    from moto.stepfunctions.parser.api import HistoryEventType, LambdaFunctionFailedEventDetails
    from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import (
        CustomErrorName,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
        FailureEvent,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_lambda import (  # noqa: E501
        StateTaskServiceLambda,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.state_task_lambda import (
        StateTaskLambda,
    )
    from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails

    stock_from_error = StateTaskLambda._from_error

    def _from_error(self: Any, env: Any, ex: Exception) -> Any:
        if isinstance(ex, ClientError):
            error, cause = StateTaskServiceLambda._error_cause_from_client_error(ex)
            return FailureEvent(
                env=env,
                error_name=CustomErrorName(error),
                event_type=HistoryEventType.LambdaFunctionFailed,
                event_details=EventDetails(
                    lambdaFunctionFailedEventDetails=LambdaFunctionFailedEventDetails(
                        error=error, cause=cause
                    )
                ),
            )
        return stock_from_error(self, env, ex)

    _from_error.stock = stock_from_error  # type: ignore[attr-defined]
    StateTaskLambda._from_error = _from_error  # type: ignore[method-assign]


def _epoch_millis(value: Any) -> Any:
    """Datetimes -> epoch milliseconds, recursively (Step Functions' JSON for dates)."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.UTC)
        return int(value.timestamp() * 1000)
    if isinstance(value, dict):
        return {k: _epoch_millis(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_epoch_millis(v) for v in value]
    return value


@functools.cache
def _operation_model(service: str, action_snake: str) -> Any:
    import botocore.session
    from botocore import xform_name

    model = botocore.session.get_session().get_service_model(service)
    for name in model.operation_names:
        if xform_name(name) == action_snake:
            return model.operation_model(name)
    raise KeyError(f"{service} has no operation {action_snake}")


@_once("sfn_start_execution_shapes")
def fix_sfn_start_execution_shapes() -> None:
    """``arn:aws:states:::states:startExecution`` (plain, ``.sync``, ``.sync:2``) works.

    moto ported LocalStack's ``StateTaskService`` but stubbed out ``_normalise_parameters``
    and ``_normalise_response``. For ``StateTaskServiceSfn`` that means boto3 receives
    ``StateMachineArn``/``Input``/``Name`` where the API wants ``stateMachineArn``/... (moto
    raises ``KeyError: 'StateMachineArn'``), and the integration pattern reads
    ``ExecutionArn`` from a response that says ``executionArn``. The replacements map the
    request keys onto the botocore input shape (lower camel), map the response onto
    Step Functions' Pascal case (only the shape's own keys: the JSON inside ``Input`` and
    ``Output`` is left alone) and turn datetimes into epoch milliseconds as AWS does. With
    them, continue-as-new via ``$$.StateMachine.Id`` and parent -> child ``.sync:2`` work.
    """
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sfn import (  # noqa: E501
        StateTaskServiceSfn,
    )

    stock_params = StateTaskServiceSfn._normalise_parameters
    stock_response = StateTaskServiceSfn._normalise_response

    def _normalise_parameters(
        self: Any,
        parameters: dict,
        boto_service_name: str | None = None,
        service_action_name: str | None = None,
    ) -> None:
        stock_params(self, parameters, boto_service_name, service_action_name)
        op = _operation_model(
            self._get_boto_service_name(boto_service_name),
            self._get_boto_service_action(service_action_name),
        )
        if op.input_shape is not None:
            self._to_boto_request(parameters, op.input_shape)

    def _normalise_response(
        self: Any,
        response: Any,
        boto_service_name: str | None = None,
        service_action_name: str | None = None,
    ) -> None:
        stock_response(self, response, boto_service_name, service_action_name)
        if not isinstance(response, dict):
            return
        op = _operation_model(
            self._get_boto_service_name(boto_service_name),
            self._get_boto_service_action(service_action_name),
        )
        if op.output_shape is not None:
            self._from_boto_response(response, op.output_shape)
        for key, value in list(response.items()):
            response[key] = _epoch_millis(value)

    _normalise_parameters.stock = stock_params  # type: ignore[attr-defined]
    _normalise_response.stock = stock_response  # type: ignore[attr-defined]
    StateTaskServiceSfn._normalise_parameters = _normalise_parameters  # type: ignore[method-assign]
    StateTaskServiceSfn._normalise_response = _normalise_response  # type: ignore[method-assign]


@_once("execution_default_name")
def fix_execution_default_name() -> None:
    """Executions started without a name get a UUID, as on AWS.

    ``StepFunctionsParserBackend.start_execution`` uses ``name`` as given, so an execution
    started without one is called ``None`` (ARN ``...:None``) and the second unnamed start
    of the same machine -- e.g. continue-as-new, or an EventBridge target -- fails with
    ``ExecutionAlreadyExists``.
    """
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    stock = StepFunctionsParserBackend.start_execution

    def start_execution(
        self: Any,
        state_machine_arn: str,
        name: str | None = None,
        execution_input: str | None = None,
        trace_header: str | None = None,
    ) -> Any:
        return stock(
            self, state_machine_arn, name or str(uuid.uuid4()), execution_input, trace_header
        )

    start_execution.stock = stock  # type: ignore[attr-defined]
    StepFunctionsParserBackend.start_execution = start_execution  # type: ignore[method-assign]


def _iso_time(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = _dt.datetime.fromtimestamp(value, tz=_dt.UTC)
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.UTC)
        return value.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value


@_once("events_states_targets")
def fix_events_states_targets() -> None:
    """EventBridge rules can target state machines.

    ``moto.events.models.Rule.send_to_targets`` raises ``NotImplementedError`` for a
    ``states`` target (and S3's EventBridge notification swallows it), so an upload never
    starts the job. The replacement starts an execution (UUID name) of each matching
    ``states`` target through the executing backend, with the event as input -- or the
    target's ``Input``, ``InputPath`` or ``InputTransformer`` -- and ``time`` as an ISO 8601
    string as EventBridge sends it; the other targets go to moto's own code.
    """
    import copy

    from moto.events.models import Rule
    from moto.events.utils import EventTemplateParser
    from moto.stepfunctions import responses
    from moto.utilities.arns import parse_arn

    stock = Rule.send_to_targets

    def send_to_targets(self: Any, original_event: Any, transform_input: bool = True) -> None:
        states = [t for t in self.targets if parse_arn(t["Arn"]).service == "states"]
        if not states:
            return stock(self, original_event, transform_input)
        if not self.event_pattern.matches_event(original_event):
            return None
        for target in states:
            event = dict(original_event)
            if "time" in event:
                event["time"] = _iso_time(event["time"])
            if "Input" in target:
                payload = target["Input"]
            elif "InputPath" in target:
                from jsonpath_ng.ext import parse

                matches = parse(target["InputPath"]).find(event)
                payload = json.dumps(matches[0].value if matches else None)
            elif "InputTransformer" in target and transform_input:
                transformer = target["InputTransformer"]
                payload = json.dumps(
                    EventTemplateParser.parse(
                        input_template=transformer.get("InputTemplate"),
                        input_paths_map=transformer.get("InputPathsMap", {}),
                        event=event,
                    )
                )
            else:
                payload = json.dumps(event)
            arn = parse_arn(target["Arn"])
            backend = responses.get_backend(arn.account, arn.region)
            backend.start_execution(target["Arn"], str(uuid.uuid4()), payload)
        others = [t for t in self.targets if t not in states]
        if others:
            rest = copy.copy(self)
            rest.targets = others
            stock(rest, original_event, transform_input)
        return None

    send_to_targets.stock = stock  # type: ignore[attr-defined]
    Rule.send_to_targets = send_to_targets  # type: ignore[method-assign]


_client_cache: dict[tuple[Any, ...], Any] = {}
_client_lock = threading.Lock()


def clear_client_cache() -> None:
    """Forget the cached boto3 clients of :func:`fix_boto_client_cache`."""
    with _client_lock:
        _client_cache.clear()


@_once("boto_client_cache")
def fix_boto_client_cache() -> None:
    """One boto3 client per (service, region) for the ASL interpreter (speed).

    ``...asl.utils.boto_client.boto_client_for`` builds a new boto3 client -- loading the
    service model, creating a session -- for every task it runs: the largest share of the
    ~90 ms per Map round measured on moto 5.2.5. Clients are thread-safe; the cached ones are
    keyed by everything the stock function reads (service, region, whether moto intercepts
    boto calls, the moto server port), so the server mode keeps working. Credentials are the
    same dummy ones moto passes.
    """
    from moto.core.models import botocore_stubber
    from moto.settings import moto_server_port
    from moto.stepfunctions.parser.asl.utils import boto_client

    stock = boto_client.boto_client_for

    def boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
        intercepting = botocore_stubber.enabled
        key = (region, service, intercepting, None if intercepting else moto_server_port())
        client = _client_cache.get(key)
        if client is None:
            with _client_lock:
                client = _client_cache.get(key)
                if client is None:
                    client = stock(region, service, state_credentials)
                    _client_cache[key] = client
        return client

    boto_client_for.stock = stock  # type: ignore[attr-defined]
    boto_client.boto_client_for = boto_client_for
    _rebind(BOTO_CLIENT_FOR_USERS, "boto_client_for", stock, boto_client_for)


@_once("json_path_parse_cache")
def fix_json_path_parse_cache() -> None:
    """Memoise JSONPath parsing in the ASL interpreter (speed).

    ``...asl.utils.json_path.extract_json`` (every ``$.x`` in Parameters, Choice, ItemsPath)
    and ``ResultPath`` call ``jsonpath_ng``'s ``parse`` -- a PLY parser run -- on every
    evaluation. The parsed expressions are immutable, so one per path string is enough.
    """
    from moto.stepfunctions.parser.asl.component.common.path import result_path
    from moto.stepfunctions.parser.asl.utils import json_path

    for module in (json_path, result_path):
        cached = functools.lru_cache(maxsize=4096)(module.parse)
        cached.stock = module.parse  # type: ignore[attr-defined]
        module.parse = cached


class _DiscardingList(list):  # type: ignore[type-arg]
    """A list that stays empty: ``append`` drops its argument."""

    def append(self, item: Any) -> None:
        return None


@_once("tmp_threads_leak")
def fix_tmp_threads_leak() -> None:
    """Stop ``moto.stepfunctions.parser.utils.TMP_THREADS`` from growing forever (speed, memory).

    Every execution, state, Map iteration and branch appends its worker thread to the
    module-level list ``TMP_THREADS`` and nothing ever removes it (LocalStack clears it at
    shutdown; moto never does), keeping every finished thread -- and through it the
    execution's environment -- alive. The list is replaced, in the modules that bound it by
    name, with one that discards what is appended.
    """
    from moto.stepfunctions.parser import utils

    old = utils.TMP_THREADS
    new = _DiscardingList()
    new.stock = old  # type: ignore[attr-defined]
    utils.TMP_THREADS = new
    _rebind(TMP_THREADS_USERS, "TMP_THREADS", old, new)
    old.clear()


@_once("layer_version_ref")
def fix_layer_version_ref() -> None:
    """``!Ref`` of an ``AWS::Lambda::LayerVersion`` is its ARN.

    ``moto.awslambda.models.LayerVersion`` has no ``physical_resource_id``, so moto's
    CloudFormation resolves ``!Ref Layer`` to the Python object itself: an output shows
    ``<moto.awslambda.models.LayerVersion object at ...>`` and a function's ``Layers`` holds
    an object instead of an ARN. SAM templates always ``!Ref`` their layers (``Globals``).
    """
    from moto.awslambda.models import LayerVersion

    def physical_resource_id(self: Any) -> str:
        return str(self.arn)

    LayerVersion.physical_resource_id = property(physical_resource_id)  # type: ignore[attr-defined]


@_once("s3_url_module_reload")
def fix_s3_url_module_reload() -> None:
    """Stop moto reloading ``moto.s3.urls`` on every S3 request (speed).

    ``moto.s3.models.S3Backend._url_module`` calls ``importlib.reload(moto.s3.urls)`` each
    time it is read -- so that a change of the custom-endpoint settings is seen -- and
    moto's request router reads it twice per S3 request: every ``get_object``/``put_object``
    a handler makes re-reads, re-compiles and re-executes that module. In a training round,
    where every worker reads its shard and the parameters and writes a gradient, that was
    over half the wall time. The replacement reloads only when
    ``moto.settings.get_s3_custom_endpoints()`` changed.
    """
    from importlib import reload

    from moto import settings
    from moto.s3.models import S3Backend

    stock = S3Backend._url_module
    state: dict[str, Any] = {}
    lock = threading.Lock()

    def _url_module(self: Any) -> Any:
        import moto.s3.urls as backend_urls_module

        key = tuple(settings.get_s3_custom_endpoints())
        if state.get("key") != key:
            with lock:
                if state.get("key") != key:
                    reload(backend_urls_module)
                    state["key"] = key
        return backend_urls_module

    prop = property(_url_module)
    _url_module.stock = stock  # type: ignore[attr-defined]
    S3Backend._url_module = prop  # type: ignore[method-assign,assignment]


@_once("s3_overwrite_while_reading")
def fix_s3_overwrite_while_reading() -> None:
    """Overwriting an S3 object must not break a GET of it that is still in flight.

    When a key of an unversioned bucket is overwritten, moto calls ``FakeKey.dispose()`` on
    the old key, which closes its value buffer at once. A GET served on another thread that
    already holds the old key then fails inside moto with ``ValueError: I/O operation on
    closed file`` -- here, the CLI polling ``status.json`` while the reducer rewrites it.
    S3 itself serves either the old or the new object. The replacement leaves an explicitly
    disposed buffer open; it is closed when the key is garbage-collected
    (``FakeKey.__del__`` calls ``dispose(garbage=True)``).
    """
    from moto.s3.models import FakeKey

    stock = FakeKey.dispose

    def dispose(self: Any, garbage: bool = False) -> None:
        if garbage:
            stock(self, garbage=True)
        else:
            self.disposed = True

    dispose.stock = stock  # type: ignore[attr-defined]
    FakeKey.dispose = dispose  # type: ignore[method-assign]


#: Bytes written to a key's buffer at a time (far below moto's 5 MiB spill threshold).
S3_VALUE_WRITE_CHUNK = 1 << 20


@_once("s3_value_spills_in_chunks")
def fix_s3_value_spills_in_chunks() -> None:
    """Store a large S3 object without two extra copies of it in memory.

    ``FakeKey.value = data`` writes ``data`` into a ``SpooledTemporaryFile`` in one call:
    the whole object is first copied into the spool's in-memory buffer, and only then
    rolled over to disk (``getvalue()``: a third copy). For a 400 MB dataset or shard that
    is a gigabyte of transient memory on a laptop. Writing in 1 MiB slices of a memoryview
    lets the spool roll over after its first 5 MiB, so only the caller's bytes are in
    memory. The stored bytes, ``contentsize`` and everything else are unchanged.
    """
    from moto.s3.models import FakeKey

    stock = FakeKey.value.fset

    def set_value(self: Any, new_value: bytes) -> None:
        if isinstance(new_value, str) or len(new_value) <= S3_VALUE_WRITE_CHUNK:
            stock(self, new_value)
            return
        self._value_buffer.seek(0)
        self._value_buffer.truncate()
        view = memoryview(new_value)
        for lo in range(0, len(view), S3_VALUE_WRITE_CHUNK):
            self._value_buffer.write(view[lo : lo + S3_VALUE_WRITE_CHUNK])
        self.contentsize = len(new_value)

    set_value.stock = stock  # type: ignore[attr-defined]
    FakeKey.value = FakeKey.value.setter(set_value)  # type: ignore[method-assign]


_retry_delay_scale = 1.0
#: What the scaled waits finally call (a seam for the guard test).
_sleep = time.sleep


def retry_delay_scale() -> float:
    """The factor applied to every ASL ``Retry`` wait (1.0: the real waits)."""
    return _retry_delay_scale


def set_retry_delay_scale(scale: float) -> float:
    """Multiply every ASL ``Retry`` wait by ``scale`` (process-wide); return the old factor.

    ``0`` retries at once; ``0.01`` keeps the order of the waits (and the jitter) at a
    hundredth of the time. Only the embedded engine's interpreter is affected.
    """
    global _retry_delay_scale
    if not 0.0 <= float(scale) <= 1.0:
        raise ValueError(f"retry delay scale must be in [0, 1], got {scale}")
    previous, _retry_delay_scale = _retry_delay_scale, float(scale)
    return previous


class _ScaledRetryTime:
    """Stands in for the ``time`` module inside moto's retrier: ``sleep`` is scaled."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        scaled = seconds * _retry_delay_scale
        if scaled > 0:
            _sleep(scaled)


@_once("retry_delay_scale")
def fix_retry_delay_scale() -> None:
    """Let tests and chaos runs scale the waits between ASL retries.

    moto's ``RetrierDecl._eval_body`` (``...asl.component.common.retry.retrier_decl``)
    computes the wait (``IntervalSeconds`` x ``BackoffRate`` ^ n, ``MaxDelaySeconds``,
    ``JitterStrategy``) and then really sleeps ``time.sleep(interval_seconds)`` in the
    execution's thread: with our Retry (1 s, x2, up to 6 attempts) a fault-injection test
    spends most of its time asleep. The module's ``time`` is replaced by an object whose
    ``sleep`` multiplies by :func:`retry_delay_scale` (1.0 unless
    :func:`set_retry_delay_scale` changed it), so nothing changes by default.
    """
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    stock = retrier_decl.time
    proxy = _ScaledRetryTime()
    proxy.stock = stock  # type: ignore[attr-defined]
    retrier_decl.time = proxy  # type: ignore[assignment]


#: First and longest pause between two checks of a ``.sync`` child (seconds).
SYNC_POLL_FIRST = 0.005
SYNC_POLL_MAX = 0.5


@_once("sync_poll_backoff")
def fix_sync_poll_backoff() -> None:
    """A ``.sync``/``.sync:2`` task notices its child's end within milliseconds (speed), and a
    retried one waits for its new child (fidelity).

    ``StateTaskServiceCallback._eval_sync`` checks the child execution (``DescribeExecution``)
    and then sleeps ``_DELAY_SECONDS_SYNC_CONDITION_CHECK`` = 0.5 s, so every child costs its
    parent 0.25 s on average after it ended. The training state machine waits on one Express
    segment child per segment, so that was most of a short segment's time. The replacement
    polls with a doubling pause, from :data:`SYNC_POLL_FIRST` up to moto's 0.5 s: a short child
    is seen at once, a long one (a sweep point) costs no more checks than before.

    It also listened, beside the polling, on the task's ``waitForTaskToken`` endpoint, which
    moto opens for every Step Functions task (the integration supports that pattern too) but
    which a ``.sync`` task never receives on: AWS gives it no task token. The endpoint is made
    once per state entry and interrupted when an attempt ends, so a ``.sync`` task retried
    after its child failed found it interrupted and failed at once with ``States.Timeout``
    instead of waiting for its new child. ``_eval_sync`` only runs for ``.sync``/``.sync:2``
    (``waitForTaskToken`` waits elsewhere), so the replacement does not listen on it. (A task's
    ``TimeoutSeconds`` still bounds the wait: ``ExecutionState._evaluate_with_timeout`` runs
    it in a thread it gives up on at that time.)
    """
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_callback as module,
    )

    cls = module.StateTaskServiceCallback
    stock = cls._eval_sync

    def _eval_sync(
        self: Any,
        env: Any,
        sync_resolver: Callable[[], Any] | None,
        timeout_seconds: int | None,
        callback_endpoint: Any,
        heartbeat_endpoint: Any,
    ) -> Any:
        import time

        pause, sync_result = SYNC_POLL_FIRST, None
        while env.is_running():
            sync_result = sync_resolver()  # type: ignore[misc]
            if sync_result:
                break
            time.sleep(pause)
            pause = min(pause * 2, module._DELAY_SECONDS_SYNC_CONDITION_CHECK, SYNC_POLL_MAX)
        return sync_result

    _eval_sync.stock = stock  # type: ignore[attr-defined]
    cls._eval_sync = _eval_sync  # type: ignore[method-assign]


class InProcessS3Client:
    """The slice of the boto3 S3 client a :class:`~lambdagrad.store.Store` uses, served by
    moto's S3 backend directly (speed: the embedded engine's handlers use it).

    Through boto3, every S3 request in process pays botocore's serialization, endpoint rules,
    SigV4 signing and response parsing plus moto's HTTP emulation (werkzeug environ, header
    and URL dispatch): about 5 ms of CPU, while the object store itself takes microseconds.
    A training round of a small model is mostly those requests. This client calls
    ``moto.s3.models.S3Backend.{put_object,get_object,head_object,list_objects_v2}`` -- the
    methods moto's own S3 responses call -- so the objects are the same ones boto3 sees,
    notifications fire the same way (``put_object`` sends them), and errors are botocore
    ``ClientError`` s with S3's codes (``NoSuchKey``, ``404``, ``NoSuchBucket``,
    ``PreconditionFailed``), which is all the store looks at. ``IfNoneMatch="*"`` is checked
    and written under one lock. ``requests`` counts the calls by operation.
    """

    def __init__(self, account_id: str, partition: str = "aws") -> None:
        self.account_id = account_id
        self.partition = partition
        self.requests: dict[str, int] = {}
        self._lock = threading.Lock()

    def _backend(self) -> Any:
        from moto.s3.models import s3_backends

        return s3_backends[self.account_id][self.partition]

    def _count(self, operation: str) -> None:
        with self._lock:
            self.requests[operation] = self.requests.get(operation, 0) + 1

    @staticmethod
    def _error(operation: str, code: str, message: str, status: int) -> Exception:
        from botocore.exceptions import ClientError

        return ClientError(
            {
                "Error": {"Code": code, "Message": message},
                "ResponseMetadata": {"HTTPStatusCode": status},
            },
            operation,
        )

    def _bucket(self, operation: str, name: str) -> Any:
        from moto.s3.exceptions import MissingBucket

        try:
            return self._backend().get_bucket(name)
        except MissingBucket:
            raise self._error(operation, "NoSuchBucket", f"no bucket {name}", 404) from None

    def put_object(
        self,
        Bucket: str,
        Key: str,
        Body: bytes,
        ContentType: str | None = None,
        IfNoneMatch: str | None = None,
        Tagging: str | None = None,
    ) -> dict[str, Any]:
        self._count("PutObject")
        self._bucket("PutObject", Bucket)
        backend = self._backend()
        with self._lock if IfNoneMatch == "*" else contextlib.nullcontext():
            if IfNoneMatch == "*" and backend.get_object(Bucket, Key) is not None:
                raise self._error("PutObject", "PreconditionFailed", "If-None-Match", 412)
            key = backend.put_object(Bucket, Key, bytes(Body))
        if ContentType:
            key.set_metadata({"Content-Type": ContentType})
        if Tagging:  # the x-amz-tagging form, as moto's S3 responses parse it
            tags = {k: v[0] for k, v in parse_qs(Tagging, keep_blank_values=True).items()}
            backend.put_object_tagging(key, tags)
        return {"ETag": key.etag}

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        self._count("GetObject")
        self._bucket("GetObject", Bucket)
        key = self._backend().get_object(Bucket, Key)
        if key is None:
            raise self._error("GetObject", "NoSuchKey", f"no key {Key}", 404)
        return {"Body": io.BytesIO(key.value), "ContentLength": key.size, "ETag": key.etag}

    def head_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        self._count("HeadObject")
        self._bucket("HeadObject", Bucket)
        key = self._backend().head_object(Bucket, Key)
        if key is None:
            raise self._error("HeadObject", "404", "Not Found", 404)
        return {"ContentLength": key.size, "ETag": key.etag}

    def list_objects_v2(
        self,
        Bucket: str,
        Prefix: str = "",
        ContinuationToken: str | None = None,
        MaxKeys: int = 1000,
    ) -> dict[str, Any]:
        self._count("ListObjectsV2")
        bucket = self._bucket("ListObjectsV2", Bucket)
        keys, truncated, token = self._backend().list_objects_v2(
            bucket, Prefix, None, ContinuationToken, None, MaxKeys
        )
        page: dict[str, Any] = {
            "Contents": [{"Key": k.name, "Size": k.size} for k in keys if not isinstance(k, str)],
            "IsTruncated": truncated,
            "KeyCount": len(keys),
        }
        if token:
            page["NextContinuationToken"] = token
        return page


_IN_PROCESS_S3: dict[str, InProcessS3Client] = {}


def in_process_s3_client(region: str | None = None) -> InProcessS3Client:
    """The process's :class:`InProcessS3Client` for moto's default account (S3 is global)."""
    from moto.core import DEFAULT_ACCOUNT_ID

    with _lock:
        client = _IN_PROCESS_S3.get(DEFAULT_ACCOUNT_ID)
        if client is None:
            client = _IN_PROCESS_S3[DEFAULT_ACCOUNT_ID] = InProcessS3Client(DEFAULT_ACCOUNT_ID)
        return client


#: The fixes, in the order :func:`apply_all` applies them.
FIXES: tuple[Callable[[], None], ...] = (
    fix_state_machine_cloudformation,
    fix_lambda_invoke_in_process,
    fix_task_lambda_service_error_names,
    fix_sfn_start_execution_shapes,
    fix_execution_default_name,
    fix_events_states_targets,
    fix_layer_version_ref,
    fix_boto_client_cache,
    fix_json_path_parse_cache,
    fix_tmp_threads_leak,
    fix_s3_url_module_reload,
    fix_s3_overwrite_while_reading,
    fix_s3_value_spills_in_chunks,
    fix_retry_delay_scale,
    fix_sync_poll_backoff,
)


def apply_all() -> None:
    """Apply every fix (idempotent). Warns if moto is not the version they were written for."""
    global _version_warned
    with _lock:
        import moto

        if moto.__version__ != MOTO_VERSION and not _version_warned:
            _version_warned = True
            warnings.warn(
                f"lambdagrad's moto fixes target moto {MOTO_VERSION}, found {moto.__version__}; "
                "run tests/unit/test_moto_fixes.py",
                MotoVersionWarning,
                stacklevel=2,
            )
        for fix in FIXES:
            fix()
