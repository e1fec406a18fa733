"""llama.cpp's RPC backend: layers of a model on other machines, each running `pace-gguf rpc-server`.

A server is llama.cpp's rpc-server program built on pace-gguf's ggml (installed next to the
library as `pace-rpc-server`): its CPU backend has the AMB kernel, so an AMB layer placed on a server
keeps its bank there and runs the op there, like every other op of the layer. pace-gguf's RPC
protocol has a major version of its own (cpp/patches/0009), so a pace-gguf client and an upstream
server refuse each other at the handshake instead of failing on the first AMB op.

Servers are added to the process once (llama.cpp's devices are process-wide) and then count as GPU
devices: `n_gpu_layers` places layers on them, the first server first. The protocol has no
authentication or encryption; like upstream, bind servers to 127.0.0.1 or a private network only.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import sys
from pathlib import Path

from .errors import PaceError

DEFAULT_PORT = 50052  # llama.cpp's rpc-server default
SERVER_PROGRAM = "pace-rpc-server"

_ADD_SERVER = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)  # ggml_backend_rpc_add_server
# The handshake (ggml-rpc.cpp): request | cmd u8 = RPC_CMD_HELLO (14, fixed across versions) | size u64 |
# conn_caps[24] (zeros: plain TCP) |; response | size u64 | major, minor, patch, padding u8 | conn_caps[24] |.
_HELLO = struct.pack("<BQ", 14, 24) + bytes(24)
_HELLO_REPLY_MAX = 1024
HANDSHAKE_TIMEOUT_S = 10.0
_added: dict[str, list[str]] = {}  # endpoint -> its device names, in this process


class RpcError(PaceError):
    """An RPC server that cannot be used: a malformed endpoint, no RPC backend, or no answer."""


def parse_endpoint(text: str) -> str:
    """HOST:PORT, checked; returns it as given. HOST is a name or an IPv4 address: llama.cpp's RPC
    transport is IPv4 only (AF_INET, gethostbyname, and the first ':' ends the host)."""
    host, sep, port = text.strip().partition(":")
    if ":" in port or host.startswith("["):
        raise RpcError(f"RPC server {text!r}: llama.cpp's RPC backend speaks IPv4 only; give a host name or "
                       f"an IPv4 address, e.g. 127.0.0.1:{DEFAULT_PORT}")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RpcError(f"RPC server {text!r}: give HOST:PORT, e.g. 127.0.0.1:{DEFAULT_PORT}")
    return text.strip()


def parse_endpoints(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """Endpoints from "HOST:PORT,HOST:PORT" or a list of them."""
    items = text.split(",") if isinstance(text, str) else list(text)
    endpoints = [parse_endpoint(item) for item in items if item.strip()]
    if not endpoints:
        raise RpcError("no RPC server given")
    return endpoints


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return data


def server_protocol(endpoint: str, timeout: float = HANDSHAKE_TIMEOUT_S) -> tuple[int, int, int]:
    """The RPC protocol version (major, minor, patch) the server at endpoint answers the handshake with.
    Raises RpcError if nothing answers there."""
    host, _, port = endpoint.partition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(_HELLO)
            (size,) = struct.unpack("<Q", _recv_exact(sock, 8))
            if not 3 <= size <= _HELLO_REPLY_MAX:
                raise ConnectionError(f"a handshake reply of {size} bytes")
            major, minor, patch = _recv_exact(sock, size)[:3]
    except (OSError, ConnectionError) as exc:
        raise RpcError(f"RPC server {endpoint}: no answer ({exc}); start one there with "
                       f"`pace-gguf rpc-server --host HOST --port {port}`") from None
    return major, minor, patch


def check_server(endpoint: str) -> None:
    """Raises RpcError unless the server speaks this build's protocol (llama.cpp's rule: the same major
    version, a minor version not above ours). llama.cpp's RPC backend aborts the process on a failed
    connection or handshake, so every server is checked here first."""
    from ._bindings import api  # noqa: PLC0415

    ours = api().llama_pace_rpc_protocol()
    major, minor = ours >> 16, (ours >> 8) & 0xFF
    theirs = server_protocol(endpoint)
    if theirs[0] != major or theirs[1] > minor:
        raise RpcError(f"RPC server {endpoint} speaks RPC protocol {'.'.join(map(str, theirs))}, this build "
                       f"{major}.{minor}.{ours & 0xFF}: it is upstream llama.cpp's rpc-server (which cannot run the "
                       "AMB) or another pace-gguf version; run this version's `pace-gguf rpc-server` there")


def add_servers(servers: str | list[str] | tuple[str, ...]) -> list[str]:
    """Adds each server's devices to this process (once per endpoint); returns their names (RPC0, ...).
    Raises RpcError naming the first server that does not answer as a pace-gguf server."""
    from . import _native  # noqa: PLC0415 (loads the library)
    from ._bindings import api  # noqa: PLC0415

    c = api()
    _native.llama_cpp_module().llama_backend_init()
    reg = c.ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise RpcError("this build of pace-gguf has no RPC backend (it was built with -DGGML_RPC=OFF)")
    address = c.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_add_server")
    if not address:
        raise RpcError("the RPC backend of this build lacks ggml_backend_rpc_add_server")
    add = _ADD_SERVER(address)
    names = []
    for endpoint in parse_endpoints(servers):
        if endpoint not in _added:
            check_server(endpoint)
            before = _native.device_names()
            server_reg = add(endpoint.encode())
            if not server_reg:
                raise RpcError(f"RPC server {endpoint} has no devices")
            c.ggml_backend_register(server_reg)
            _added[endpoint] = [name for name in _native.device_names() if name not in before]
        names += _added[endpoint]
    return names


def server_program() -> Path:
    """The installed pace-rpc-server program."""
    from .paths import lib_dir  # noqa: PLC0415

    path = lib_dir() / (SERVER_PROGRAM + (".exe" if sys.platform == "win32" else ""))
    if not path.is_file():
        raise RpcError(f"{path} is missing: this build of pace-gguf has no RPC server (built with -DGGML_RPC=OFF?)")
    return path


def server_command(host: str = "127.0.0.1", port: int = DEFAULT_PORT, threads: int | None = None,
                   cache: bool = False) -> list[str]:
    """The command line that runs a server."""
    if not 0 < port < 65536:
        raise RpcError(f"port {port}: give 1..65535")
    command = [str(server_program()), "--host", host, "--port", str(port)]
    if threads is not None:
        command += ["--threads", str(threads)]
    if cache:
        command.append("--cache")
    return command


def check_listenable(host: str, port: int) -> None:
    """Raises RpcError unless this process could listen on host:port (the server program says "Failed to
    create server socket" and exits with status 0 when it cannot)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # the server listens on IPv4 only
            sock.bind((host, port))
    except OSError as exc:
        raise RpcError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT, threads: int | None = None, cache: bool = False,
          on_start=None):
    """Replaces this process with a server; `on_start()` runs once the checks have passed."""
    command = server_command(host, port, threads, cache)
    check_listenable(host, port)
    if on_start:
        on_start()
    os.execv(command[0], command)
