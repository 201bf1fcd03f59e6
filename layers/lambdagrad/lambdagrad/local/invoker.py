"""Run Lambda handlers in this process, the way the Lambda Python runtime would.

moto's Lambda (without Docker) answers every invoke with a canned string. The embedded engine
replaces that with :func:`invoke_in_process` (see :mod:`lambdagrad.local.moto_fixes`), which:

* finds the function's code: a zip built by the engine carries a marker naming the local
  ``CodeUri`` folder (so the handler is imported from the working tree); any other zip is
  extracted once into a temporary folder;
* imports ``<module>.py`` under a module name unique to the function, so that every
  ``functions/<name>/app.py`` can be loaded side by side;
* applies the function's ``Environment.Variables`` to ``os.environ`` when loading it (handlers
  share one process, so a variable that two functions set differently is a warning);
* calls ``handler(event, context)`` and shapes the answer like Lambda: an exception becomes
  status 200 with ``x-amz-function-error: Unhandled`` and a body ``{"errorType",
  "errorMessage", "requestId", "stackTrace"}``, which is what lets ASL ``Retry``/``Catch``
  match the exception's class name;
* can fail the next invocations of a function the way the Lambda *service* does
  (:meth:`InProcessInvoker.fail_next`), which Step Functions reports as ``Lambda.<Code>``;
  fail every attempt of one call (:meth:`InProcessInvoker.fail_matching`, a straggler); or
  fail a seeded fraction of invocations with service errors, timeouts and crashes
  (:meth:`InProcessInvoker.set_chaos`, see :mod:`lambdagrad.local.chaos`).

Handlers run concurrently in Map threads: module loading happens under a lock, invocations
do not. Output that a handler writes to ``sys.stdout`` (``print``, Powertools Logger) can be
routed to a log file per function with :meth:`InProcessInvoker.configure`.

Example
-------
>>> inv = InProcessInvoker()
>>> inv.fail_next("my-function", times=2)          # next two invokes are throttled
>>> inv.pending_faults("my-function")
2
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
import traceback
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from . import chaos as chaos_faults
from .chaos import Chaos, Fault

LOG = logging.getLogger(__name__)

#: Name of the file inside an engine-built code zip that points at the local source folder.
SOURCE_MARKER = ".lambdagrad-local-source.json"

#: HTTP status of the Lambda service errors that :meth:`InProcessInvoker.fail_next` can raise.
SERVICE_ERROR_STATUS: dict[str, int] = {
    "TooManyRequestsException": 429,
    "ServiceException": 500,
    "EC2ThrottledException": 502,
    "ResourceNotReadyException": 502,
    "AWSLambdaException": 500,
}


class HandlerImportError(Exception):
    """A function's handler could not be imported (bad ``Handler`` or broken module)."""


def make_code_zip(source_dir: str | Path) -> bytes:
    """Build the placeholder code zip that points the in-process invoker at ``source_dir``.

    The zip holds only :data:`SOURCE_MARKER`; the handler is imported from ``source_dir`` at
    invoke time, so edits to handlers are picked up without a redeploy.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(SOURCE_MARKER, json.dumps({"path": str(Path(source_dir).resolve())}))
    return buf.getvalue()


@dataclass
class LambdaContext:
    """The ``context`` argument, with the attributes of the Lambda Python runtime's object.

    As in the real runtime, ``memory_limit_in_mb`` and ``function_version`` are strings.
    """

    function_name: str
    function_version: str
    invoked_function_arn: str
    memory_limit_in_mb: str
    aws_request_id: str
    log_group_name: str
    log_stream_name: str
    timeout_s: float
    identity: Any = None
    client_context: Any = None
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        if not self._deadline:
            self._deadline = time.monotonic() + self.timeout_s

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the function's configured timeout."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class _ThreadRoutedStream(io.TextIOBase):
    """A ``sys.stdout`` stand-in that sends writes from handler threads to another stream."""

    def __init__(self, default: TextIO, local: threading.local):
        self._default = default
        self._local = local

    @property
    def default(self) -> TextIO:
        return self._default

    def _target(self) -> TextIO:
        return getattr(self._local, "stream", None) or self._default

    def write(self, s: str) -> int:  # type: ignore[override]
        return self._target().write(s)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return self._target().isatty()

    def fileno(self) -> int:
        return self._default.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._default, "encoding", "utf-8")

    def writable(self) -> bool:
        return True


@dataclass
class _Loaded:
    module: ModuleType
    handler: Any


@dataclass
class _Profile:
    """Local-run settings of one function: extra environment and where its output goes."""

    env: dict[str, str]
    log_path: Path | None


class InProcessInvoker:
    """Loads and calls Lambda handlers in this process; see the module docstring."""

    def __init__(self) -> None:
        self._load_lock = threading.RLock()
        self._fault_lock = threading.Lock()
        self._loaded: dict[tuple[str, str, str], _Loaded] = {}
        self._faults: dict[str, list[str]] = {}
        self._matching: dict[str, list[list[Any]]] = {}  # [match, fault, times left]
        self._chaos: Chaos | None = None
        self._env_owner: dict[str, tuple[str, str]] = {}
        self._extracted: dict[str, Path] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._local = threading.local()
        self._profiles: dict[str, _Profile] = {}
        self._streams: dict[Path, TextIO] = {}
        self._routed: _ThreadRoutedStream | None = None
        self._saved_stdout: TextIO | None = None
        self._rerouted_handlers: list[tuple[logging.StreamHandler[Any], Any]] = []
        self._route_lock = threading.RLock()
        #: Invocations per function name, injected failures included (see :meth:`admit`).
        self.invocations: dict[str, int] = {}

    # ---------------------------------------------------------------- configuration
    def configure(
        self,
        function_names: list[str],
        *,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        """Set local-run settings for these functions (an engine calls this after deploying).

        ``env`` is applied to ``os.environ`` after each function's own variables when its
        module is loaded (e.g. to disable tracing). With ``log_path``, what the handlers
        write to stdout while they run -- ``print``, a Powertools Logger -- goes to that file
        instead of the terminal. Routing works per thread: ``sys.stdout`` is wrapped by a
        proxy that sends writes from a thread running a handler to its file and everything
        else to the original stream (re-wrapped at the next invocation if someone else -- a
        progress display, pytest -- replaced ``sys.stdout``); logging handlers that already
        hold the real stdout write through the proxy too.
        """
        with self._route_lock:
            path = Path(log_path).resolve() if log_path is not None else None
            if path is not None and path not in self._streams:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._streams[path] = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            for name in function_names:
                self._profiles[name] = _Profile(env=dict(env or {}), log_path=path)
            if self._streams:
                self._ensure_routed()
                self._reroute_logging_handlers()

    def forget(self, function_names: list[str]) -> None:
        """Drop the settings, faults and loaded modules of these functions."""
        names = set(function_names)
        with self._route_lock:
            for name in names:
                self._profiles.pop(name, None)
            used = {p.log_path for p in self._profiles.values()}
            for path in [p for p in self._streams if p not in used]:
                self._streams.pop(path).close()
            if not self._streams:
                self._stop_routing()
        with self._fault_lock:
            for name in names:
                self._faults.pop(name, None)
                self._matching.pop(name, None)
                self.invocations.pop(name, None)
        with self._load_lock:
            for key in [k for k in self._loaded if k[0] in names]:
                sys.modules.pop(self._loaded.pop(key).module.__name__, None)
            for var in [v for v, (owner, _) in self._env_owner.items() if owner in names]:
                del self._env_owner[var]

    # ----------------------------------------------------------------- fault injection
    def fail_next(
        self, function_name: str, times: int = 1, error: str = "TooManyRequestsException"
    ) -> None:
        """Make the next ``times`` invocations of ``function_name`` fail as a service error.

        The error reaches the caller as a ``ClientError`` with code ``error`` (HTTP 429 for
        ``TooManyRequestsException``, 5xx otherwise), which Step Functions names
        ``Lambda.<error>`` so that a ``Retry`` on it applies. The handler does not run.
        """
        if times < 0:
            raise ValueError("times must be >= 0")
        with self._fault_lock:
            self._faults.setdefault(function_name, []).extend([error] * times)

    def fail_matching(
        self,
        function_name: str,
        match: dict[str, Any],
        fault: Fault | None = None,
        times: int | None = None,
    ) -> None:
        """Fail the invocations of ``function_name`` whose event has the fields of ``match``.

        Every one of them (``times=None``): a straggler, e.g. ``match={"round": 2, "shard":
        1}`` fails that worker on every attempt, so its retries run out. Or only the first
        ``times``, e.g. a reducer that crashes once after writing its checkpoint. ``fault``
        defaults to a timeout that stops the handler before it writes anything. Cleared by
        :meth:`clear_faults`.
        """
        if times is not None and times < 0:
            raise ValueError("times must be >= 0")
        with self._fault_lock:
            self._matching.setdefault(function_name, []).append(
                [dict(match), fault or chaos_faults.timeout(run_handler=False), times]
            )

    def set_chaos(self, chaos: Chaos | None) -> None:
        """Let ``chaos`` fail a fraction of invocations (``None`` stops it)."""
        with self._fault_lock:
            self._chaos = chaos

    def pending_faults(self, function_name: str) -> int:
        """How many injected faults are still waiting for ``function_name``."""
        with self._fault_lock:
            return len(self._faults.get(function_name, []))

    def admit(self, function_name: str, body: Any = None) -> Fault | None:
        """Count an invocation of ``function_name``; return the injected fault it must fail with.

        ``None`` means: run the handler. Faults queued by :meth:`fail_next` come first, then
        those of :meth:`fail_matching`, then the chaos decision (``body`` is the request
        payload, which names the call). A fault whose ``before_handler`` is set must be
        raised as a service error; the others are applied by :meth:`invoke`.
        """
        with self._fault_lock:
            self.invocations[function_name] = self.invocations.get(function_name, 0) + 1
            queue = self._faults.get(function_name)
            if queue:
                return chaos_faults.transient(queue.pop(0))
            rules = self._matching.get(function_name)
            if rules:
                event = _event_of(body)
                for rule in rules:
                    match, fault, left = rule
                    if left != 0 and all(event.get(k) == v for k, v in match.items()):
                        if left is not None:
                            rule[2] = left - 1
                        return fault
            chaos = self._chaos
        return chaos.decide(function_name, body) if chaos is not None else None

    def clear_faults(self, function_names: list[str] | None = None) -> None:
        """Drop pending faults, straggler rules and chaos (of these functions, or all) and
        their invocation counts."""
        with self._fault_lock:
            for name in list(self._faults) if function_names is None else function_names:
                self._faults.pop(name, None)
            for name in list(self._matching) if function_names is None else function_names:
                self._matching.pop(name, None)
            if function_names is None or (
                self._chaos is not None and set(function_names) & set(self._chaos.functions)
            ):
                self._chaos = None
            for name in list(self.invocations) if function_names is None else function_names:
                self.invocations.pop(name, None)

    # ------------------------------------------------------------------ output routing
    def _ensure_routed(self) -> None:
        if not self._streams or sys.stdout is self._routed:
            return
        with self._route_lock:
            if self._streams and sys.stdout is not self._routed:
                if self._saved_stdout is None:
                    self._saved_stdout = sys.stdout
                self._routed = _ThreadRoutedStream(sys.stdout, self._local)
                sys.stdout = self._routed

    def _reroute_logging_handlers(self) -> None:
        if self._routed is None or self._saved_stdout is None:
            return
        seen = {id(h) for h, _ in self._rerouted_handlers}
        loggers = [logging.getLogger()] + [
            lg
            for lg in logging.Logger.manager.loggerDict.values()
            if isinstance(lg, logging.Logger)
        ]
        for lg in loggers:
            for h in lg.handlers:
                if (
                    isinstance(h, logging.StreamHandler)
                    and id(h) not in seen
                    and h.stream in (self._saved_stdout, sys.__stdout__)
                ):
                    self._rerouted_handlers.append((h, h.stream))
                    h.setStream(self._routed)
                    seen.add(id(h))

    def _stop_routing(self) -> None:
        for h, stream in self._rerouted_handlers:
            with contextlib.suppress(Exception):
                h.setStream(stream)
        self._rerouted_handlers.clear()
        if self._routed is not None and sys.stdout is self._routed:
            sys.stdout = self._routed.default
        self._routed = None
        self._saved_stdout = None

    @contextlib.contextmanager
    def _handler_output(self, function_name: str) -> Iterator[None]:
        profile = self._profiles.get(function_name)
        stream = None
        if profile is not None and profile.log_path is not None:
            stream = self._streams.get(profile.log_path)
            self._ensure_routed()
        previous = getattr(self._local, "stream", None)
        self._local.stream = stream
        try:
            yield
        finally:
            self._local.stream = previous

    # ------------------------------------------------------------------ module loading
    def reset(self) -> None:
        """Forget loaded modules, faults and counters (settings and environment changes stay)."""
        with self._load_lock:
            for loaded in self._loaded.values():
                sys.modules.pop(loaded.module.__name__, None)
            self._loaded.clear()
            self._env_owner.clear()
        self.clear_faults()

    def close(self) -> None:
        """Reset, drop every function's settings, stop routing output, delete extracted code."""
        self.reset()
        self.forget(list(self._profiles))
        with self._route_lock:
            for stream in self._streams.values():
                stream.close()
            self._streams.clear()
            self._stop_routing()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._extracted.clear()

    def _source_dir(self, fn: Any) -> Path:
        code: bytes = getattr(fn, "code_bytes", b"") or b""
        if not code:
            raise HandlerImportError(
                f"function {fn.function_name!r} has no code zip to run (image functions are "
                "not supported in process)"
            )
        digest = hashlib.sha256(code).hexdigest()
        with zipfile.ZipFile(io.BytesIO(code)) as zf:
            if SOURCE_MARKER in zf.namelist():
                return Path(json.loads(zf.read(SOURCE_MARKER))["path"])
            if digest not in self._extracted:
                if self._tmp is None:
                    self._tmp = tempfile.TemporaryDirectory(prefix="lambdagrad-code-")
                target = Path(self._tmp.name) / digest[:16]
                zf.extractall(target)
                self._extracted[digest] = target
            return self._extracted[digest]

    def _apply_environment(self, fn: Any) -> None:
        variables = {str(k): str(v) for k, v in (fn.environment_vars or {}).items()}
        for key, value in variables.items():
            owner = self._env_owner.get(key)
            if owner is not None and owner[1] != value and owner[0] != fn.function_name:
                LOG.warning(
                    "functions %s and %s set %s differently (%r vs %r); handlers share one "
                    "process, the last one loaded wins",
                    owner[0],
                    fn.function_name,
                    key,
                    owner[1],
                    value,
                )
            self._env_owner[key] = (fn.function_name, value)
            os.environ[key] = value
        profile = self._profiles.get(fn.function_name)
        if profile is not None:
            os.environ.update(profile.env)

    @staticmethod
    def _refresh_environment(fn: Any) -> None:
        """Re-assert ``fn``'s variables before each call: another stack deployed in this
        process since (a second engine) may have set the same names to its own values."""
        for key, value in (fn.environment_vars or {}).items():
            if os.environ.get(str(key)) != str(value):
                os.environ[str(key)] = str(value)

    def load(self, fn: Any) -> _Loaded:
        """Import ``fn``'s handler module (once per function and code version)."""
        key = (fn.function_name, getattr(fn, "code_sha_256", ""), fn.handler or "")
        loaded = self._loaded.get(key)
        if loaded is not None:
            return loaded
        with self._load_lock:
            loaded = self._loaded.get(key)
            if loaded is not None:
                return loaded
            loaded = self._import(fn)
            self._loaded[key] = loaded
            self._reroute_logging_handlers()
            return loaded

    def _import(self, fn: Any) -> _Loaded:
        handler_spec: str = fn.handler or ""
        module_path, _, attr = handler_spec.rpartition(".")
        if not module_path or not attr:
            raise HandlerImportError(
                f"function {fn.function_name!r}: handler {handler_spec!r} is not 'module.function'"
            )
        source = self._source_dir(fn)
        relative = Path(*module_path.replace("/", ".").split("."))
        candidates = [source / relative.with_suffix(".py"), source / relative / "__init__.py"]
        file = next((c for c in candidates if c.is_file()), None)
        if file is None:
            raise HandlerImportError(
                f"function {fn.function_name!r}: no {relative}.py under {source}"
            )
        self._apply_environment(fn)
        safe = re.sub(r"\W", "_", fn.function_name)
        tag = hashlib.sha1(f"{fn.function_name}:{file}".encode()).hexdigest()[:8]
        module_name = f"_lambdagrad_fn_{safe}_{tag}"
        spec = importlib.util.spec_from_file_location(module_name, file)
        if spec is None or spec.loader is None:
            raise HandlerImportError(f"cannot import {file}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        # Like the runtime, the code folder is on sys.path while the module is imported, so
        # a handler can import its sibling files.
        sys.path.insert(0, str(source))
        try:
            with self._handler_output(fn.function_name):
                spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        finally:
            with contextlib.suppress(ValueError):
                sys.path.remove(str(source))
        handler = getattr(module, attr, None)
        if not callable(handler):
            raise HandlerImportError(f"{file} has no callable {attr!r}")
        return _Loaded(module=module, handler=handler)

    # ------------------------------------------------------------------------- invoke
    def invoke(
        self, fn: Any, qualifier: str | None, body: Any, headers: Any, fault: Fault | None = None
    ) -> tuple[bytes, bool]:
        """Run ``fn``'s handler on the JSON ``body``.

        Returns ``(payload, errored)``; when ``errored`` the payload is Lambda's error
        document and the caller must set ``x-amz-function-error: Unhandled``. With a
        ``fault`` (a timeout or crash from :meth:`admit`), the handler runs only if
        ``fault.run_handler`` -- its outputs stay written, its answer is dropped -- and the
        invocation reports the fault's error document, as Lambda would.
        """
        request_id = str(uuid.uuid4())
        if fault is not None and not fault.run_handler:
            doc = fault.error_document(request_id, float(fn.timeout or 3))
            return json.dumps(doc).encode("utf-8"), True
        try:
            loaded = self.load(fn)
        except Exception as exc:
            return self._error_payload(exc, request_id, import_error=True), True
        raw = body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else body
        event = json.loads(raw) if raw else {}
        version = "$LATEST" if qualifier in (None, "", "$LATEST") else str(qualifier)
        arn = fn.function_arn if qualifier in (None, "") else f"{fn.function_arn}:{qualifier}"
        day = time.strftime("%Y/%m/%d", time.gmtime())
        context = LambdaContext(
            function_name=fn.function_name,
            function_version=version,
            invoked_function_arn=arn,
            memory_limit_in_mb=str(fn.memory_size),
            aws_request_id=request_id,
            log_group_name=f"/aws/lambda/{fn.function_name}",
            log_stream_name=f"{day}/[{version}]{request_id.replace('-', '')}",
            timeout_s=float(fn.timeout or 3),
        )
        self._refresh_environment(fn)
        started = time.monotonic()
        try:
            with self._handler_output(fn.function_name):
                result = loaded.handler(event, context)
        except Exception as exc:
            return self._error_payload(exc, request_id), True
        if fault is not None:  # the handler finished; its process dies before answering
            return json.dumps(fault.error_document(request_id, context.timeout_s)).encode(), True
        elapsed = time.monotonic() - started
        if elapsed > context.timeout_s:
            LOG.warning(
                "%s took %.1f s, more than its %s s timeout (Lambda would have stopped it)",
                fn.function_name,
                elapsed,
                fn.timeout,
            )
        try:
            return json.dumps(result).encode("utf-8"), False
        except (TypeError, ValueError) as exc:
            doc = {
                "errorMessage": f"Unable to marshal response: {exc}",
                "errorType": "Runtime.MarshalError",
                "requestId": request_id,
                "stackTrace": [],
            }
            return json.dumps(doc).encode("utf-8"), True

    @staticmethod
    def _error_payload(exc: BaseException, request_id: str, import_error: bool = False) -> bytes:
        if import_error:
            error_type = "Runtime.ImportModuleError"
            message = f"Unable to import module: {exc}"
        else:
            error_type = type(exc).__name__
            message = str(exc)
        doc = {
            "errorMessage": message,
            "errorType": error_type,
            "requestId": request_id,
            # like the runtime: frames from the handler on, not the invoker's own
            "stackTrace": traceback.format_list(
                [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
            ),
        }
        return json.dumps(doc).encode("utf-8")


def _event_of(body: Any) -> dict[str, Any]:
    try:
        raw = body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else body
        event = json.loads(raw) if raw else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    return event if isinstance(event, dict) else {}


_INVOKER = InProcessInvoker()


def get_invoker() -> InProcessInvoker:
    """The process-wide invoker that the patched moto Lambda backend uses."""
    return _INVOKER
