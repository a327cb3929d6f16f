"""Reject-signal sinks against real servers on 127.0.0.1 (pymodbus and asyncua servers run in the test process,
each on its own event loop thread), and SinkWorker's isolation, retries and stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from pydantic import TypeAdapter, ValidationError

from lineguard.inspect.base import InspectError, RejectSink, SignalError
from lineguard.inspect.sinks import (
    LogSink,
    LogSinkConfig,
    ModbusSink,
    ModbusSinkConfig,
    OpcUaSink,
    OpcUaSinkConfig,
    SignalJob,
    SinkConfig,
    SinkWorker,
    make_sink,
)

PART: Dict[str, object] = {"serial": "A17", "frame_id": 3, "decision": "NG", "reason": "crack"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopThread:
    """An asyncio event loop in a daemon thread, for a server."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class ModbusServer:
    """pymodbus' TCP server: unit 1 with 16 coils; keeps its datastore across stop/start; records requests."""

    def __init__(self, port: int) -> None:
        from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext, ModbusSlaveContext

        self.port = port
        coils = ModbusSequentialDataBlock(0, [False] * 16)
        self.context = ModbusServerContext(slaves={1: ModbusSlaveContext(co=coils)}, single=False)
        self.requests: List[Any] = []
        self.manipulate: Optional[Callable[[Any], Any]] = None  # changes the responses (a lying PLC)
        self._loop = LoopThread()
        self._server: Optional[Any] = None

    def start(self) -> None:
        from pymodbus.server import ModbusTcpServer

        async def up() -> Any:
            server = ModbusTcpServer(self.context, address=("127.0.0.1", self.port),
                                     request_tracer=lambda request, *addr: self.requests.append(request),
                                     response_manipulator=lambda r: (self.manipulate(r) if self.manipulate else r,
                                                                     False))
            assert await server.listen()
            return server

        self._server = self._loop.run(up())

    def stop(self) -> None:
        if self._server is not None:
            self._loop.run(self._server.shutdown())
            self._server = None

    def close(self) -> None:
        self.stop()
        self._loop.close()

    def coil(self, address: int) -> bool:
        return bool(self.context[1].getValues(1, address, 1)[0])

    def coil_writes(self) -> List[bool]:
        return [r.value for r in self.requests if r.function_code == 5]


class OpcUaServer:
    """asyncua's server with writable variables ns=2;s=Line1.Reject (Boolean) and ns=2;s=Line1.Count (Int32)."""

    def __init__(self, port: int) -> None:
        self.url = f"opc.tcp://127.0.0.1:{port}/"
        self._loop = LoopThread()
        self.server: Optional[Any] = None

    def start(self) -> None:
        from asyncua import Server, ua

        async def up() -> Tuple[Any, Any, int]:
            server = Server()
            await server.init()
            server.set_endpoint(self.url)
            idx = await server.register_namespace("urn:lineguard:test")
            reject = await server.nodes.objects.add_variable(ua.NodeId("Line1.Reject", idx), "Reject", False)
            count = await server.nodes.objects.add_variable(ua.NodeId("Line1.Count", idx), "Count", 0,
                                                            varianttype=ua.VariantType.Int32)
            for var in (reject, count):
                await var.set_writable()
            await server.start()
            return server, reject, idx

        self.server, self._reject, idx = self._loop.run(up())
        assert idx == 2

    @contextlib.contextmanager
    def gone(self) -> Iterator[None]:
        """Close the listening socket and every connection (the server process 'goes away'), then serve again
        on the same port."""
        assert self.server is not None
        self._loop.run(self.server.bserver.stop())
        try:
            yield
        finally:
            self._loop.run(self.server.bserver.start())

    def value(self) -> bool:
        return self._loop.run(self._reject.read_value())

    def close(self) -> None:
        try:
            if self.server is not None:
                self._loop.run(self.server.stop())
        finally:
            self._loop.close()


@pytest.fixture
def modbus_server() -> Iterator[ModbusServer]:
    pytest.importorskip("pymodbus")
    server = ModbusServer(free_port())
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def opcua_server() -> Iterator[OpcUaServer]:
    """One server for the module (it takes 1-2 s to start and to stop); tests leave it serving."""
    pytest.importorskip("asyncua")
    server = OpcUaServer(free_port())
    try:
        server.start()
        yield server
    finally:
        server.close()


def modbus_sink(port: int, **kw: Any) -> ModbusSink:
    return ModbusSink(ModbusSinkConfig(kind="modbus", port=port, **kw))


class Recorder:
    """An on_done callback that keeps every report."""

    def __init__(self) -> None:
        self.reports: List[Tuple[SignalJob, Optional[bool], Optional[str], int]] = []
        self._cond = threading.Condition()

    def __call__(self, job: SignalJob, value: Optional[bool], error: Optional[str], attempts: int) -> None:
        with self._cond:
            self.reports.append((job, value, error, attempts))
            self._cond.notify_all()

    def wait(self, n: int, timeout: float = 5.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.reports) >= n, timeout), f"{len(self.reports)} of {n} reported"


def job(key: object, reject: bool = True, within: float = 1.0) -> SignalJob:
    return SignalJob(key=key, reject=reject, part=dict(PART), deadline=time.monotonic() + within)


# --- configs ------------------------------------------------------------------------------------------------


def test_config_union_picks_the_kind_and_rejects_unknown_keys() -> None:
    adapter = TypeAdapter(SinkConfig)
    cfg = adapter.validate_python({"kind": "modbus", "host": "10.0.0.5", "coil": 3, "pulse": True})
    assert isinstance(cfg, ModbusSinkConfig) and (cfg.port, cfg.unit, cfg.coil, cfg.timeout_s) == (502, 1, 3, 0.2)
    cfg = adapter.validate_python({"kind": "opcua", "url": "opc.tcp://plc:4840", "node": "ns=2;i=2"})
    assert isinstance(cfg, OpcUaSinkConfig) and cfg.timeout_s == 0.5
    assert isinstance(make_sink(adapter.validate_python({"kind": "log"})), LogSink)
    assert (LogSinkConfig().kind, ModbusSinkConfig().kind) == ("log", "modbus")  # the kind is their default
    for bad in ({"kind": "modbus", "coils": 3}, {"kind": "modbus", "port": 0}, {"kind": "serial"},
                {"kind": "opcua", "url": "http://plc", "node": "ns=2;i=2"}, {"kind": "modbus", "timeout_s": 0}):
        with pytest.raises(ValidationError):
            adapter.validate_python(bad)


def test_make_sink_names_a_missing_package_and_a_bad_node(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("asyncua")
    with pytest.raises(InspectError, match=r"node 'Line1\.Reject' is not a NodeId"):
        make_sink(OpcUaSinkConfig(kind="opcua", url="opc.tcp://127.0.0.1:4840", node="Line1.Reject"))
    monkeypatch.setitem(__import__("sys").modules, "pymodbus.client", None)  # import fails as if missing
    with pytest.raises(InspectError, match=r"needs the Python package 'pymodbus'; install it: pip install"):
        make_sink(ModbusSinkConfig(kind="modbus"))


def test_log_sink_logs_and_acknowledges(caplog: pytest.LogCaptureFixture) -> None:
    sink = make_sink(TypeAdapter(SinkConfig).validate_python({"kind": "log"}))
    with caplog.at_level(logging.INFO, logger="lineguard.inspect"):
        assert sink.signal(True, PART, 0.1) is True
        assert sink.signal(False, PART, 0.1) is False
    assert "REJECT" in caplog.messages[0] and "A17" in caplog.messages[0] and "pass" in caplog.messages[1]


# --- Modbus -------------------------------------------------------------------------------------------------


def test_modbus_writes_the_coil_for_reject_and_pass(modbus_server: ModbusServer) -> None:
    sink = modbus_sink(modbus_server.port, coil=5)
    sink.open()
    try:
        assert sink.signal(True, PART, 1.0) is True
        assert modbus_server.coil(5) is True
        assert sink.signal(False, PART, 1.0) is False
        assert modbus_server.coil(5) is False
        assert modbus_server.coil_writes() == [True, False]
    finally:
        sink.close()
        sink.close()  # idempotent


def test_modbus_pulse_resets_the_coil_after_a_reject(modbus_server: ModbusServer) -> None:
    sink = modbus_sink(modbus_server.port, coil=2, pulse=True)
    try:
        assert sink.signal(True, PART, 1.0) is True  # connects on the first signal
        assert modbus_server.coil(2) is False
        assert sink.signal(False, PART, 1.0) is False
        assert modbus_server.coil_writes() == [True, False, False]
    finally:
        sink.close()


def test_modbus_error_response_and_differing_read_back_fail(modbus_server: ModbusServer) -> None:
    sink = modbus_sink(modbus_server.port, coil=100)  # outside the datastore: an exception response
    try:
        with pytest.raises(SignalError, match=r"coil 100: write_coil: .*IllegalAddress"):
            sink.signal(True, PART, 1.0)
    finally:
        sink.close()

    def flip(response: Any) -> Any:
        if response.function_code == 1:
            response.bits = [not b for b in response.bits]
        return response

    modbus_server.manipulate = flip
    sink = modbus_sink(modbus_server.port)
    try:
        with pytest.raises(SignalError, match="read back False after writing True"):
            sink.signal(True, PART, 1.0)
    finally:
        sink.close()


def test_modbus_signal_is_bounded_by_the_timeout(modbus_server: ModbusServer) -> None:
    sink = modbus_sink(modbus_server.port, timeout_s=0.2)
    sink.open()
    try:
        modbus_server.stop()  # the open connection is closed, the port refuses
        for _ in range(2):
            start = time.monotonic()
            with pytest.raises(SignalError, match=f"modbus 127.0.0.1:{modbus_server.port} unit 1 coil 0: "):
                sink.signal(True, PART, 1.0)
            assert time.monotonic() - start < 0.2 + 0.1
    finally:
        sink.close()
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        sink = modbus_sink(silent.getsockname()[1], timeout_s=1.0)
        try:
            start = time.monotonic()
            with pytest.raises(SignalError):
                sink.signal(True, PART, 0.15)  # the caller's timeout is shorter than the config's
            assert 0.1 <= time.monotonic() - start < 0.15 + 0.1
        finally:
            sink.close()


def test_worker_retries_until_the_deadline_then_reconnects(modbus_server: ModbusServer) -> None:
    done = Recorder()
    worker = SinkWorker(modbus_sink(modbus_server.port, timeout_s=0.1), done)
    try:
        worker.submit(job("first"))
        done.wait(1)
        assert done.reports[0][1:] == (True, None, 1)
        modbus_server.stop()
        start = time.monotonic()
        worker.submit(job("lost", within=0.3))
        done.wait(2)
        elapsed = time.monotonic() - start
        (_, value, error, attempts) = done.reports[1]
        assert value is None and error is not None and "modbus" in error and "\n" not in error
        assert attempts > 1 and 0.25 < elapsed < 0.3 + 0.25
        assert (worker.sent, worker.failed, worker.retries) == (1, 1, attempts - 1)
        modbus_server.start()  # same port, same datastore
        worker.submit(job("back", reject=False))
        done.wait(3)
        assert done.reports[2][0].key == "back" and done.reports[2][1:3] == (False, None)
        assert modbus_server.coil(0) is False and worker.sent == 2
    finally:
        worker.stop(1.0)
    assert len(done.reports) == 3


# --- OPC UA -------------------------------------------------------------------------------------------------


def opcua_sink(server: OpcUaServer, node: str = "ns=2;s=Line1.Reject", timeout_s: float = 0.5) -> OpcUaSink:
    return OpcUaSink(OpcUaSinkConfig(kind="opcua", url=server.url, node=node, timeout_s=timeout_s))


def test_opcua_writes_and_reads_back_the_node(opcua_server: OpcUaServer) -> None:
    sink = opcua_sink(opcua_server, timeout_s=3.0)  # a loaded CI machine: the bound, not the speed, is tested here
    sink.open()
    try:
        assert sink.signal(True, PART, 1.0) is True
        assert opcua_server.value() is True
        assert sink.signal(False, PART, 1.0) is False
        assert opcua_server.value() is False
    finally:
        sink.close()
        sink.close()
    sink = opcua_sink(opcua_server, node="ns=2;s=Line1.Count", timeout_s=3.0)  # Int32: a Boolean is refused
    try:
        with pytest.raises(SignalError, match="BadTypeMismatch"):
            sink.signal(True, PART, 1.0)
    finally:
        sink.close()


def test_opcua_server_gone_fails_within_the_timeout_then_reconnects(opcua_server: OpcUaServer) -> None:
    sink = opcua_sink(opcua_server, timeout_s=0.3)
    try:
        assert sink.signal(True, PART, 1.0) is True
        with opcua_server.gone():
            for _ in range(2):  # the lost connection, then a refused one
                start = time.monotonic()
                with pytest.raises(SignalError, match=f"opcua {opcua_server.url} ns=2;s=Line1.Reject: "):
                    sink.signal(False, PART, 1.0)
                assert time.monotonic() - start < 0.3 + 0.1
        assert sink.signal(False, PART, 1.0) is False
        assert opcua_server.value() is False
    finally:
        sink.close()
    with socket.socket() as silent:  # a TCP peer that never speaks OPC UA
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        sink = OpcUaSink(OpcUaSinkConfig(kind="opcua", url=f"opc.tcp://127.0.0.1:{silent.getsockname()[1]}/",
                                         node="ns=2;i=2", timeout_s=0.2))
        try:
            start = time.monotonic()
            with pytest.raises(SignalError, match="no answer within 200 ms"):
                sink.signal(True, PART, 1.0)
            assert time.monotonic() - start < 0.2 + 0.1
        finally:
            sink.close()


# --- SinkWorker ---------------------------------------------------------------------------------------------


class SlowSink(RejectSink):
    """Acknowledges after ``delay`` s; ``fail`` attempts first raise (SignalError, or a bug when ``bug``)."""

    name = "slow"

    def __init__(self, delay: float = 0.0, fail: int = 0, bug: bool = False) -> None:
        self.delay, self.fail, self.bug = delay, fail, bug
        self.calls = 0
        self.started = threading.Event()
        self.opened = self.closed = False

    def open(self) -> None:
        self.opened = True

    def signal(self, reject: bool, part: Dict[str, object], timeout: float) -> bool:
        self.calls += 1
        self.started.set()
        time.sleep(self.delay)
        if self.calls <= self.fail:
            if self.bug:
                raise RuntimeError("serial\nmissing")
            raise SignalError("slow: no acknowledgement")
        return reject

    def close(self) -> None:
        self.closed = True


def test_worker_submit_never_waits_for_a_slow_sink() -> None:
    done = Recorder()
    sink = SlowSink(delay=0.5)
    worker = SinkWorker(sink, done)
    try:
        start = time.perf_counter()
        assert all(worker.submit(job(i, within=5.0)) for i in range(3))
        assert time.perf_counter() - start < 0.01
    finally:
        worker.stop(drain_timeout=3.0)
    assert [(r[0].key, r[1], r[2], r[3]) for r in done.reports] == [(0, True, None, 1), (1, True, None, 1),
                                                                     (2, True, None, 1)]
    assert sink.opened and sink.closed and worker.sent == 3


def test_worker_full_queue_is_reported_at_once() -> None:
    done = Recorder()
    sink = SlowSink(delay=0.3)
    worker = SinkWorker(sink, done, queue_size=1)
    try:
        assert worker.submit(job("in flight"))
        assert sink.started.wait(2)
        assert worker.submit(job("queued"))
        start = time.perf_counter()
        assert not worker.submit(job("refused"))
        assert time.perf_counter() - start < 0.01
        assert [(r[0].key, r[1:]) for r in done.reports] == [("refused", (None, "sink queue full", 0))]
    finally:
        worker.stop(drain_timeout=2.0)
    assert [r[0].key for r in done.reports] == ["refused", "in flight", "queued"]
    assert (worker.sent, worker.failed) == (2, 1)


def test_worker_stop_bounds_the_drain_and_is_idempotent() -> None:
    done = Recorder()
    sink = SlowSink(delay=0.3)
    worker = SinkWorker(sink, done)
    for i in range(3):
        worker.submit(job(i, within=5.0))
    assert sink.started.wait(2)
    start = time.monotonic()
    worker.stop(drain_timeout=0.1)
    assert time.monotonic() - start < 0.3 + 0.2
    assert [(r[0].key, r[1:]) for r in done.reports] == [(0, (True, None, 1)), (1, (None, "stopped", 0)),
                                                         (2, (None, "stopped", 0))]
    worker.stop(drain_timeout=0.1)
    assert not worker.submit(job(3))
    assert done.reports[-1][0].key == 3 and done.reports[-1][2] == "stopped"
    assert (worker.sent, worker.failed) == (1, 3)


def test_worker_stop_does_not_wait_for_a_stuck_sink() -> None:
    done = Recorder()
    sink = SlowSink(delay=1.0)
    worker = SinkWorker(sink, done)
    worker.submit(job("stuck", within=5.0))
    worker.submit(job("waiting", within=5.0))
    assert sink.started.wait(2)
    start = time.monotonic()
    worker.stop(drain_timeout=0.1)
    assert time.monotonic() - start < 0.1 + 0.5 + 0.2
    assert [(r[0].key, r[1:]) for r in done.reports] == [("waiting", (None, "stopped", 0))]
    done.wait(2)  # the stuck call ends: reported from the worker's thread, then the sink is closed
    assert done.reports[1][0].key == "stuck" and done.reports[1][1:] == (True, None, 1)
    deadline = time.monotonic() + 2
    while not sink.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.closed


def test_worker_retries_failures_and_bugs_with_backoff() -> None:
    done = Recorder()
    worker = SinkWorker(SlowSink(fail=2), done)
    bug_done = Recorder()
    bug_worker = SinkWorker(SlowSink(fail=100, bug=True), bug_done)
    try:
        worker.submit(job("flaky"))
        done.wait(1)
        assert done.reports[0][1:] == (True, None, 3) and (worker.sent, worker.retries) == (1, 2)
        start = time.monotonic()
        bug_worker.submit(job("bug", within=0.1))
        bug_done.wait(1)
        (_, value, error, attempts) = bug_done.reports[0]
        assert value is None and error == "slow: RuntimeError: serial missing"
        assert 2 <= attempts <= 6 and time.monotonic() - start < 0.1 + 0.1  # 5, 10, 20, 40 ms pauses fit 0.1 s
        bug_worker.submit(SignalJob(key="late", reject=True, part={}, deadline=time.monotonic() - 1.0))
        bug_done.wait(2)
        assert bug_done.reports[1][0].key == "late" and bug_done.reports[1][3] == 1  # one attempt anyway
    finally:
        worker.stop(1.0)
        bug_worker.stop(1.0)


def test_worker_survives_a_failing_on_done(caplog: pytest.LogCaptureFixture) -> None:
    calls: List[object] = []

    def on_done(job: SignalJob, value: Optional[bool], error: Optional[str], attempts: int) -> None:
        calls.append(job.key)
        raise RuntimeError("database gone")

    worker = SinkWorker(SlowSink(), on_done)
    with caplog.at_level(logging.ERROR, logger="lineguard.inspect"):
        worker.submit(job(1))
        worker.submit(job(2))
        worker.stop(1.0)
    assert calls == [1, 2] and worker.sent == 2
    assert "on_done failed for job 1" in caplog.text
