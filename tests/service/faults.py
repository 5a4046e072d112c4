"""Fault injection for the replication tests: a redis-server of our own that can be
crashed (with or without persistence), and a TCP proxy that cuts one replica off Redis."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.service.conftest import free_port


class RedisServer:
    """A private redis-server on a free port. persistent=False: no AOF and no snapshot,
    so a restart after `kill()` comes back EMPTY (a cache-style Redis losing its data)."""

    def __init__(self, data_dir: Path, persistent: bool) -> None:
        self.data_dir = data_dir
        self.persistent = persistent
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--dir", str(self.data_dir)]
        args += ["--appendonly", "yes" if self.persistent else "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown save."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


class CuttableProxy:
    """A TCP proxy to 127.0.0.1:target_port. `cut()` drops every connection and refuses
    new ones (a network partition between one replica and Redis); `restore()` listens on
    the same port again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._generation = 0  # bumped by cut(): a connection accepted before it must not live on

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    restore = start

    async def cut(self) -> None:
        assert self._server is not None
        self._generation += 1
        self._server.close()
        for transport in list(self._transports):
            transport.abort()  # a reset, not a polite close: what a partition looks like
        self._transports.clear()
        await self._server.wait_closed()
        self._server = None

    async def close(self) -> None:
        if self._server is not None:
            await self.cut()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        generation = self._generation
        self._transports.add(writer.transport)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        if generation != self._generation:
            # cut() ran while this connection was being set up: it is part of the partition.
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self._transports |= {writer.transport, up_writer.transport}
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            self._transports.discard(writer.transport)
            with contextlib.suppress(Exception):
                writer.transport.abort()
