"""A stand-in PLC for commissioning, the demo and the tests: pymodbus' own TCP server with 16 coils on unit 1,
in a thread of this process (``PlcSimulator``) or as a process (``python -m lineguard.inspect.plcsim``). It
counts the reject coil's writes, so the reject wiring can be checked without the line's PLC.

    with PlcSimulator(port=5020) as plc:          # 127.0.0.1:5020
        ...                                       # lineguard inspect run --set 'outputs=[{kind: modbus, port: 5020}]'
        plc.writes(), plc.coil(0)

Torch-free, Python 3.8; needs the ``line`` extra (pymodbus).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from typing import Any, List, Optional

from .base import InspectError

__all__ = ["PlcSimulator"]


class PlcSimulator:
    """pymodbus' ModbusTcpServer on ``host:port`` (its datastore kept across stop/start)."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        try:
            from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext, ModbusSlaveContext
        except ImportError as e:
            raise InspectError(f"the PLC simulator needs pymodbus ({e}); install it: pip install 'lineguard[line]'"
                               ) from None
        self.host, self.port = host, port
        coils = ModbusSequentialDataBlock(0, [False] * 16)
        self.context = ModbusServerContext(slaves={1: ModbusSlaveContext(co=coils)}, single=False)
        self.requests: List[Any] = []
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._server: Any = None

    def _run(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> PlcSimulator:
        from pymodbus.server import ModbusTcpServer

        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="plc-sim", daemon=True)
            self._thread.start()

        async def up() -> Any:
            server = ModbusTcpServer(self.context, address=(self.host, self.port),
                                     request_tracer=lambda request, *addr: self.requests.append(request))
            if not await server.listen():
                raise InspectError(f"PLC simulator: cannot listen on {self.host}:{self.port}")
            return server

        self._server = self._run(up())
        return self

    def stop(self) -> None:
        """Stop answering (the datastore stays); start() again to come back on the same port."""
        if self._server is not None:
            self._run(self._server.shutdown())
            self._server = None

    def close(self) -> None:
        self.stop()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            assert self._thread is not None
            self._thread.join(10)
            self._loop.close()
            self._loop = None

    def coil(self, address: int = 0) -> bool:
        return bool(self.context[1].getValues(1, address, 1)[0])

    def writes(self) -> List[bool]:
        """The values written to coils (function 5), in order."""
        return [bool(r.value) for r in list(self.requests) if r.function_code == 5]

    def __enter__(self) -> PlcSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    ap = argparse.ArgumentParser(description="A stand-in PLC (Modbus TCP, 16 coils, unit 1).")
    ap.add_argument("--port", type=int, default=5020)
    ap.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: until SIGTERM or SIGINT)")
    args = ap.parse_args()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with PlcSimulator(args.port) as plc:
        print(f"PLC simulator on 127.0.0.1:{args.port}", flush=True)
        stop.wait(args.seconds or None)
        w = plc.writes()
        print(f"PLC simulator: {len(w)} reject-coil writes, {sum(w)} rejects", flush=True)


if __name__ == "__main__":
    main()
