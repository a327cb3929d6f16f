"""Reject-signal outputs ("sinks") of the line daemon: a PLC coil over Modbus TCP, a Boolean OPC UA node, a log
line; and :class:`SinkWorker`, which runs one sink in its own thread so that a slow or failing output never
stalls the frame loop. Torch-free, Python 3.8 (the line computer).

    cfg = TypeAdapter(SinkConfig).validate_python({"kind": "modbus", "host": "10.0.0.5", "coil": 3})
    worker = SinkWorker(make_sink(cfg), on_done=record)       # record(job, value, error, attempts)
    worker.submit(SignalJob(key=row_id, reject=True, part={"serial": "A17"}, deadline=time.monotonic() + 0.2))
    ...
    worker.stop(drain_timeout=1.0)                            # finishes what is queued, closes the sink

Every sink writes the decision for every part (True = reject, False = pass) and reads it back: the value read
back is the acknowledgement. Connections stay open between signals; after a failure the next signal connects
again. ``pymodbus`` and ``asyncua`` are optional packages, imported when a sink that needs one is made.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Dict, Optional, Union

from pydantic import Field
from typing_extensions import Annotated, Literal

from lineguard.config import StrictModel
from lineguard.inspect.base import InspectError, RejectSink, SignalError

__all__ = ["LogSink", "LogSinkConfig", "ModbusSink", "ModbusSinkConfig", "OnDone", "OpcUaSink", "OpcUaSinkConfig",
           "SignalJob", "SinkConfig", "SinkWorker", "make_sink"]

_log = logging.getLogger("lineguard.inspect")

BACKOFF_FIRST_S = 0.005  # pause after a failed attempt, doubling per retry ...
BACKOFF_MAX_S = 0.05  # ... up to this
STOP_GRACE_S = 0.5  # how long stop() waits beyond the drain time for a sink call in progress


class ModbusSinkConfig(StrictModel):
    """A coil on a Modbus TCP server (the PLC): True for reject, False for pass; ``pulse`` resets it to False
    after an acknowledged reject, so that every reject is a rising edge."""

    kind: Literal["modbus"] = "modbus"
    host: str = "127.0.0.1"
    port: int = Field(502, ge=1, le=65535)
    unit: int = Field(1, ge=0, le=255)
    coil: int = Field(0, ge=0, le=65535)
    timeout_s: float = Field(0.2, gt=0)
    pulse: bool = False


class OpcUaSinkConfig(StrictModel):
    """A Boolean variable on an OPC UA server; ``node`` is a NodeId string ("ns=2;s=Line1.Reject")."""

    kind: Literal["opcua"] = "opcua"
    url: str = Field(pattern=r"^opc\.tcp://")
    node: str
    timeout_s: float = Field(0.5, gt=0)


class LogSinkConfig(StrictModel):
    """Log every decision (logger ``lineguard.inspect``); acknowledged at once."""

    kind: Literal["log"] = "log"


SinkConfig = Annotated[Union[ModbusSinkConfig, OpcUaSinkConfig, LogSinkConfig], Field(discriminator="kind")]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _need(module: str, package: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InspectError(f"{what} needs the Python package '{package}'; install it: pip install 'lineguard[line]'"
                           ) from None


class ModbusSink(RejectSink):
    """A PLC coil over Modbus TCP (pymodbus' synchronous client): write the coil, read it back."""

    def __init__(self, cfg: ModbusSinkConfig) -> None:
        self.cfg = cfg
        self.name = f"modbus {cfg.host}:{cfg.port} unit {cfg.unit} coil {cfg.coil}"
        self._client_class = _need("pymodbus.client", "pymodbus", "the modbus reject sink").ModbusTcpClient
        self._client: Optional[Any] = None

    def open(self) -> None:
        self._connect(time.monotonic() + self.cfg.timeout_s)

    def signal(self, reject: bool, part: Dict[str, object], timeout: float) -> bool:
        reject = bool(reject)
        end = time.monotonic() + min(self.cfg.timeout_s, timeout)
        try:
            client = self._connect(end) if self._client is None else self._client
            self._request(client.write_coil, end, reject)
            value = bool(self._request(client.read_coils, end, 1).bits[0])
            if value != reject:
                raise SignalError(f"{self.name}: read back {value} after writing {reject}")
            if reject and self.cfg.pulse:
                self._request(client.write_coil, end, False)
        except SignalError:
            self.close()
            raise
        except Exception as e:  # a connection lost mid-request, a malformed answer
            self.close()
            raise SignalError(f"{self.name}: {_one_line(e)}") from None
        return value

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _connect(self, end: float) -> Any:
        # The socket is ours (pymodbus 3.6 logs an ERROR line for every refused connect and drops the reason);
        # a new client per connection, as pymodbus 3.6 remembers units that did not answer and then waits out
        # the timeout on every later answer.
        left = max(end - time.monotonic(), 1e-3)
        try:
            sock = socket.create_connection((self.cfg.host, self.cfg.port), timeout=left)
        except OSError as e:
            raise SignalError(f"{self.name}: cannot connect: {_one_line(e)}") from None
        client = self._client_class(self.cfg.host, port=self.cfg.port, timeout=left, retries=0)
        client.socket = sock
        self._client = client
        return client

    def _request(self, method: Callable[..., Any], end: float, arg: object) -> Any:
        left = end - time.monotonic()
        if left <= 0:
            raise SignalError(f"{self.name}: out of time before {method.__name__}")
        assert self._client is not None
        self._client.comm_params.timeout_connect = left  # pymodbus 3.6 bounds connect and each answer by it
        result = method(self.cfg.coil, arg, slave=self.cfg.unit)
        if result.isError():
            raise SignalError(f"{self.name}: {method.__name__}: {' '.join(str(result).split())}")
        return result


class OpcUaSink(RejectSink):
    """A Boolean OPC UA node (asyncua's client on an event loop in a helper thread, so that its keep-alive runs
    between signals): write the value, read it back. Every call is bounded by the timeout."""

    def __init__(self, cfg: OpcUaSinkConfig) -> None:
        self.cfg = cfg
        self.name = f"opcua {cfg.url} {cfg.node}"
        self._ua = _need("asyncua", "asyncua", "the opcua reject sink")
        try:
            self._nodeid = self._ua.ua.NodeId.from_string(cfg.node)
        except Exception:
            raise InspectError(f"opcua reject sink: node '{cfg.node}' is not a NodeId (like 'ns=2;s=Line1.Reject')"
                               ) from None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._client: Optional[Any] = None  # owned by the loop's thread, like _node
        self._node: Optional[Any] = None

    def open(self) -> None:
        self._run(self._ensure(), self.cfg.timeout_s)

    def signal(self, reject: bool, part: Dict[str, object], timeout: float) -> bool:
        reject = bool(reject)
        value = self._run(self._write_read(reject), min(self.cfg.timeout_s, timeout))
        if value is not reject:
            self._restart()
            raise SignalError(f"{self.name}: read back {value!r} after writing {reject}")
        return value

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(self.cfg.timeout_s + STOP_GRACE_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    def _run(self, coro: Any, budget: float) -> Any:
        """Run ``coro`` on the sink's loop, at most ``budget`` s; any failure is a SignalError and a reconnect."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name=f"{self.name} loop", daemon=True)
            self._thread.start()
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(budget)
        except concurrent.futures.TimeoutError:
            future.cancel()
            error = f"no answer within {budget * 1000:.0f} ms"
        except Exception as e:
            error = _one_line(e)
        self._restart()
        raise SignalError(f"{self.name}: {error}")

    def _restart(self) -> None:
        """Drop the connection (in the background); the next call connects again."""
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._reset(), self._loop)

    async def _ensure(self) -> None:
        if self._node is None:
            self._client = self._ua.Client(self.cfg.url, timeout=self.cfg.timeout_s)
            await self._client.connect()
            self._node = self._client.get_node(self._nodeid)

    async def _write_read(self, reject: bool) -> object:
        await self._ensure()
        assert self._node is not None
        ua = self._ua.ua
        await self._node.write_value(ua.DataValue(ua.Variant(reject, ua.VariantType.Boolean)))  # no timestamps
        return await self._node.read_value()

    async def _reset(self) -> None:
        client, self._client, self._node = self._client, None, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), self.cfg.timeout_s)

    async def _shutdown(self) -> None:
        await self._reset()
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)


class LogSink(RejectSink):
    """Log the decision (logger ``lineguard.inspect``, INFO); acknowledged at once."""

    name = "log"

    def signal(self, reject: bool, part: Dict[str, object], timeout: float) -> bool:
        _log.info("reject signal: %s %s", "REJECT" if reject else "pass", part)
        return bool(reject)


def make_sink(cfg: SinkConfig) -> RejectSink:
    """The sink ``cfg`` describes (not connected yet); InspectError when its package is missing."""
    if isinstance(cfg, ModbusSinkConfig):
        return ModbusSink(cfg)
    if isinstance(cfg, OpcUaSinkConfig):
        return OpcUaSink(cfg)
    return LogSink()


@dataclass
class SignalJob:
    """One part's decision for one sink."""

    key: object  # the caller's reference (the results row id)
    reject: bool
    part: Dict[str, object]  # serial, frame id, decision, reason
    deadline: float  # time.monotonic() by which the actuator must have the signal


OnDone = Callable[[SignalJob, Optional[bool], Optional[str], int], None]  # (job, value read back, error, attempts)


class SinkWorker:
    """Runs one sink in a daemon thread. :meth:`submit` never blocks; the thread retries each job until it is
    acknowledged or its deadline passes (a job already late gets one attempt, of at least ``min_attempt_s``),
    then calls ``on_done(job, value, error, attempts)`` exactly once: from the thread, or from the caller of
    :meth:`submit` / :meth:`stop` for jobs that were refused (queue full) or never attempted ("stopped")."""

    def __init__(self, sink: RejectSink, on_done: OnDone, queue_size: int = 256,
                 min_attempt_s: float = 0.05) -> None:
        self.sink = sink
        self.on_done = on_done
        self.min_attempt_s = min_attempt_s
        self.sent = 0  # jobs acknowledged
        self.failed = 0  # jobs reported with an error (refused, timed out, stopped)
        self.retries = 0  # attempts beyond each job's first
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)  # SignalJob, or None to wake the thread
        self._lock = threading.Lock()
        self._stopping = False
        self._drain_until = float("inf")
        self._thread = threading.Thread(target=self._run, name=f"sink {sink.name}", daemon=True)
        self._thread.start()

    def submit(self, job: SignalJob) -> bool:
        """Queue ``job``; False (``on_done`` already called) when the queue is full or the worker stopped."""
        with self._lock:
            error = "stopped" if self._stopping else None
            if error is None:
                try:
                    self._queue.put_nowait(job)
                    return True
                except queue.Full:
                    error = "sink queue full"
        self._finish(job, None, error, 0)
        return False

    def stop(self, drain_timeout: float = 1.0) -> None:
        """Finish the queued jobs for at most ``drain_timeout`` s (the rest: error "stopped"), close the sink;
        idempotent."""
        with self._lock:
            if not self._stopping:
                self._stopping = True
                self._drain_until = time.monotonic() + drain_timeout
                with contextlib.suppress(queue.Full):  # a full queue: the thread is not waiting
                    self._queue.put_nowait(None)
        self._thread.join(max(self._drain_until - time.monotonic(), 0.0) + STOP_GRACE_S)
        if self._thread.is_alive():  # stuck in a sink call: report the rest from here
            self._drain()

    def _run(self) -> None:
        try:
            self.sink.open()
        except Exception as e:  # signal() connects again
            _log.warning("%s: %s", self.sink.name, _one_line(e))
        try:
            while True:
                stopping = self._stopping  # read before get(): no job is queued after it is set
                try:
                    job = self._queue.get(block=not stopping)
                except queue.Empty:
                    break
                if job is not None:
                    self._process(job)
        finally:
            try:
                self.sink.close()
            except Exception as e:
                _log.warning("%s: close: %s", self.sink.name, _one_line(e))

    def _process(self, job: SignalJob) -> None:
        attempts, backoff, error = 0, BACKOFF_FIRST_S, "stopped"
        while time.monotonic() < self._drain_until:
            end = min(job.deadline, self._drain_until)
            attempts += 1
            try:
                value = self.sink.signal(job.reject, job.part, max(end - time.monotonic(), self.min_attempt_s))
                self._finish(job, value, None, attempts)
                return
            except SignalError as e:
                error = str(e)
            except Exception as e:  # a sink bug must not end the thread
                error = f"{self.sink.name}: {_one_line(e)}"
            left = end - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(backoff, left))
            if time.monotonic() >= end:
                break
            backoff = min(2 * backoff, BACKOFF_MAX_S)
        self._finish(job, None, error, attempts)

    def _drain(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self._finish(job, None, "stopped", 0)

    def _finish(self, job: SignalJob, value: Optional[bool], error: Optional[str], attempts: int) -> None:
        with self._lock:
            if error is None:
                self.sent += 1
            else:
                self.failed += 1
            self.retries += max(attempts - 1, 0)
        try:
            self.on_done(job, value, error, attempts)
        except Exception:
            _log.exception("%s: on_done failed for job %r", self.sink.name, job.key)
