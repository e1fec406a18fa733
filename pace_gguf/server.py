"""`pace-gguf serve`: llama-cpp-python's own OpenAI-compatible server (`llama_cpp.server`, the
`server` extra) with a `pace_gguf.Llama` underneath, and the AMB settable per request.

Everything that depends on llama_cpp.server's internals is in this module (pinned version:
llama-cpp-python 0.3.36, as in pyproject.toml):
* `create_app` builds its model holder by the module-global name `LlamaProxy`; for the length of
  that call we put `_PaceLlamaProxy` there, which hands out the Llama pace-gguf loaded instead of
  loading a `llama_cpp.Llama` of its own.
* Every route takes its model from that proxy while holding the server's lock (`get_llama_proxy`),
  so the proxy's `__call__` is where a request's AMB settings are applied, one request at a time.
  llama_cpp.server serves one request at a time; the others wait for the lock.
* The request models ignore unknown fields, so `PaceFieldMiddleware` reads a completion request's
  `"pace"` field before the route does, checks it against the model (invalid: HTTP 400 with an
  OpenAI-style error) and passes it to the proxy in a context variable.
* `interrupt_requests` is off: with it on (llama_cpp.server's default), a streamed answer ends
  early, with a normal-looking [DONE], as soon as another request waits.

Banks: with the AMB on, `Llama.generate` never lets a bank pass from one prompt to an unrelated
one (see llama.py), so one request's bank never reaches another's; changing the settings empties
the banks too, which is why the proxy changes them only when a request asks for different ones.
"""

from __future__ import annotations

import contextvars
import json
import os
import socket
from functools import partial
from unittest import mock

from . import _llama_cpp_compat as compat
from . import amb
from ._native import llama_cpp_module
from .amb import PaceConfig, PaceConfigError
from .errors import PaceError

_llama_cpp = llama_cpp_module()  # binds llama_cpp to pace-gguf's library before llama_cpp.server imports it
try:
    import uvicorn
    from llama_cpp.server import app as server_app
    from llama_cpp.server.errors import ErrorResponse
    from llama_cpp.server.model import LlamaProxy
    from llama_cpp.server.settings import ModelSettings, ServerSettings
    from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest
    from pydantic import ValidationError
    from starlette.requests import Request
    from starlette.responses import JSONResponse
except ImportError as exc:
    raise PaceError(f'pace-gguf serve needs the server extra ({exc.name or exc} is missing): '
                    'pip install "pace-gguf[server]"') from exc

# llama_cpp.server's routes whose requests may carry "pace", and their request models
COMPLETION_ROUTES = {
    "/v1/completions": CreateCompletionRequest,
    "/v1/chat/completions": CreateChatCompletionRequest,
    "/v1/engines/copilot-codex/completions": CreateCompletionRequest,
}

# The AMB settings of the request being handled (None: the server's)
_request_pace: contextvars.ContextVar[PaceConfig | None] = contextvars.ContextVar("pace_gguf_request_pace", default=None)


def request_config(default: PaceConfig, spec, n_layer: int) -> PaceConfig:
    """The AMB settings a request's "pace" field asks for: a JSON object of changes to the
    server's settings (PaceConfig's fields; "layers" implies "enabled" as in `Llama(pace=...)`),
    or true/false to switch the server's settings on or off. Raises PaceConfigError naming the field."""
    if isinstance(spec, bool):
        config = default.replace(enabled=spec)
    elif isinstance(spec, dict):
        if "layers" in spec and not isinstance(spec["layers"], list):
            raise PaceConfigError(f"layers must be a list of 0-based layer indices such as [12, 26], got {spec['layers']!r}")
        if not isinstance(spec.get("enabled", False), bool):  # (when absent, with_changes derives it from layers)
            raise PaceConfigError(f"enabled must be true or false, got {spec['enabled']!r}")
        config = default.with_changes(spec)
    else:
        raise PaceConfigError(f'expected an object of AMB settings such as {{"layers": [12, 26]}}, or true/false, got {spec!r}')
    amb.validate_config(config, n_layer)  # the runtime's own rules, those the context applies
    return config


def _error_response(message: str, param: str | None) -> JSONResponse:
    error = ErrorResponse(message=message, type="invalid_request_error", param=param, code=None)
    return JSONResponse({"error": error}, status_code=400)


class PaceFieldMiddleware:
    """Checks completion requests and reads their "pace" field (see the module docstring). Plain
    ASGI, so that streamed answers pass through unbuffered.

    The whole request is checked here, against llama_cpp.server's own request models, because its
    routes turn FastAPI's validation errors (a bad field, a body that is not JSON) into HTTP 500
    with a traceback on stderr; here they are a 400 that names the field."""

    def __init__(self, app, resolve):
        self.app, self.resolve = app, resolve  # resolve: "pace" value -> PaceConfig

    async def __call__(self, scope, receive, send):
        request_model = COMPLETION_ROUTES.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if request_model is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        body = await request.body()
        try:
            config = self._config(request_model, request.headers.get("content-type", ""), body)
        except PaceConfigError as exc:
            message, param = f'invalid "pace" settings: {exc}', "pace"
        except ValidationError as exc:
            message, param = _validation_message(exc), ".".join(map(str, exc.errors()[0]["loc"])) or None
        except ValueError as exc:  # json's errors (UnicodeDecodeError too) and a content type that is not JSON
            message, param = f"the request body is not valid JSON: {exc}", None
        else:
            token = _request_pace.set(config)
            try:
                await self.app(scope, _replaying(body, receive), send)
            finally:
                _request_pace.reset(token)
            return
        await _error_response(message, param)(scope, receive, send)

    def _config(self, request_model, content_type: str, body: bytes) -> PaceConfig | None:
        media_type = content_type.partition(";")[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):  # FastAPI would not parse it
            raise ValueError(f"its content type is {media_type or 'not given'}; send it as application/json")
        payload = json.loads(body)
        request_model.model_validate(payload)
        return None if payload.get("pace") is None else self.resolve(payload["pace"])


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())


def _replaying(body: bytes, receive):
    """An ASGI receive that hands the app the body already read, then the client's own messages
    (llama_cpp.server polls them to notice a client that went away)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay():
        return pending.pop() if pending else await receive()

    return replay


class _PaceLlamaProxy(LlamaProxy):
    """llama_cpp.server's model holder, holding pace-gguf's already loaded Llama (one model: every
    model name a request gives gets it) and setting it to each request's AMB settings."""

    def __init__(self, models: list, llm):
        self._llm = llm
        self._default = self._applied = llm.pace
        super().__init__(models=models)

    def load_llama_from_model_settings(self, settings):
        return self._llm

    def __call__(self, model: str | None = None):
        llm = super().__call__(model)
        wanted = _request_pace.get()
        wanted = self._default if wanted is None else wanted
        if wanted != self._applied:  # unchanged settings keep the banks (a continued conversation's)
            llm.configure_pace(wanted)
            self._applied = wanted
        return llm


def create_app(llm, model_name: str):
    """llama_cpp.server's FastAPI app serving `llm` (a pace_gguf.Llama) as `model_name`."""
    # model_construct: from these values only, not from environment variables such as API_KEY
    # or N_CTX, which pydantic-settings would otherwise read (and fail on when not numbers)
    server_settings = ServerSettings.model_construct(interrupt_requests=False)
    model_settings = [ModelSettings.model_construct(model=model_name, model_alias=model_name)]
    # create_app would replace these settings with a llama_cpp.server config file named by
    # $CONFIG_FILE, a generic name; pace-gguf serve takes its settings from its command line only
    os.environ.pop("CONFIG_FILE", None)
    # the narrowest hook: create_app calls `LlamaProxy(models=...)` by this module-global name
    with mock.patch.object(server_app, "LlamaProxy", partial(_PaceLlamaProxy, llm=llm)):
        app = server_app.create_app(server_settings=server_settings, model_settings=model_settings)
    n_layer = _llama_cpp.llama_model_n_layer(compat.model_pointer(llm))
    app.add_middleware(PaceFieldMiddleware, resolve=partial(request_config, llm.pace, n_layer=n_layer))
    return app


def listen(host: str, port: int) -> socket.socket:
    """The listening socket (port 0: a free one), bound before the model loads so that a busy
    port is reported at once."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:  # also a host name that does not resolve (socket.gaierror)
        raise PaceError(f"cannot listen on {host} port {port}: {exc.strerror or exc}") from None


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/v1" if ":" in host else f"http://{host}:{port}/v1"


def run(app, sock: socket.socket, verbose: bool = False) -> None:
    """Serve until SIGINT or SIGTERM. uvicorn then ends streamed answers, lets plain ones finish
    (a second Ctrl-C quits at once) and raises the signal again, which ends pace-gguf as the CLI does
    (status 130 or 143)."""
    config = uvicorn.Config(app, log_level="info" if verbose else "warning", access_log=verbose)
    uvicorn.Server(config).run(sockets=[sock])
