"""A real server process for each test, clients on the installed `imsdk` wheel, and a listener
that records events for the test to wait on.

The server binary comes from IMSDK_TEST_SERVER (scripts/bindings.sh sets it to the workspace's
im-server)."""

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

import imsdk

SECRET = secrets.token_hex(32)  # the server wants 32 random bytes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """im-server (gateway, logic and embedded store in one process) on a fixed port and data
    directory, so it can be killed and started again where it was."""

    def __init__(self, binary: str, data_dir: str):
        self.binary = binary
        self.data_dir = data_dir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process = None
        self.log = open(os.path.join(data_dir, "server.log"), "ab")

    def start(self):
        self.process = subprocess.Popen(
            [self.binary, "--listen", self.address, "--data-dir", self.data_dir,
             "--secret", SECRET, "--heartbeat-secs", "5", "--rate-limit", "0"],
            stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.flush()
                with open(self.log.name, "rb") as log:
                    tail = log.read()[-2000:].decode(errors="replace")
                raise RuntimeError(f"im-server exited with {self.process.returncode}:\n{tail}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("im-server did not start listening within 30 s")

    def kill(self):
        """SIGKILL: no goodbye to the clients, nothing flushed beyond what was acknowledged."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self):
        if self.process and self.process.poll() is None:
            self.kill()
        self.log.close()

    def token(self, user: str, device: str) -> str:
        return subprocess.run(
            [self.binary, "token", "--user", user, "--device", device,
             "--data-dir", self.data_dir, "--secret", SECRET],
            check=True, capture_output=True, text=True).stdout.strip()


class Recorder(imsdk.ClientListener):
    """Keeps every event; `delay` makes it a slow listener."""

    def __init__(self, delay: float = 0.0):
        self.events = []
        self.delay = delay
        self.lock = threading.Lock()

    def on_event(self, event):
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            self.events.append(event)

    def snapshot(self):
        with self.lock:
            return list(self.events)

    def received(self):
        return [e.message for e in self.snapshot() if e.is_message_received()]

    def states(self):
        return [e.state for e in self.snapshot() if e.is_state_changed()]

    async def wait_for(self, what: str, check, timeout: float = 20.0):
        """Waits until check(events) is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = check(self.snapshot())
            if value:
                return value
            if time.monotonic() > deadline:
                kinds = [type(e).__name__ for e in self.snapshot()[-20:]]
                raise AssertionError(f"timed out waiting for {what}; last events: {kinds}")
            await asyncio.sleep(0.02)


class Session:
    """A logged-in user: the client, its listener and its subscription."""

    # Every session a test opened, cancelled after it even when it failed: an event thread
    # must not call into an interpreter that is shutting down.
    opened = []

    def __init__(self, server: Server, user: str, device: str, data_dir: str,
                 listener: Recorder = None, event_capacity: int = None):
        self.user = user
        self.listener = listener or Recorder()
        self.client = imsdk.ImClient(imsdk.ClientOptions(
            server=server.address, token=server.token(user, device), user_id=user,
            device_id=device, data_dir=data_dir, platform=imsdk.Platform.DESKTOP,
            event_capacity=event_capacity))
        self.subscription = self.client.subscribe(self.listener)
        Session.opened.append(self)

    async def online(self):
        await self.listener.wait_for(f"{self.user} online", lambda events: any(
            e.is_state_changed() and e.state.is_online() for e in events))

    async def close(self):
        await self.client.shutdown()
        self.subscription.cancel()


@pytest.fixture(autouse=True)
def close_sessions():
    yield
    while Session.opened:
        session = Session.opened.pop()
        session.subscription.cancel()
        asyncio.run(session.client.shutdown())


@pytest.fixture
def server():
    binary = os.environ.get("IMSDK_TEST_SERVER")
    if not binary:
        pytest.fail("IMSDK_TEST_SERVER must name the im-server binary (scripts/bindings.sh sets it)")
    with tempfile.TemporaryDirectory() as data_dir:
        server = Server(binary, data_dir)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def app_dir():
    """The app's own directory, where each client keeps its database."""
    with tempfile.TemporaryDirectory() as path:
        yield path
