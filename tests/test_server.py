"""`pace-gguf serve`: a real server process on a free loopback port, driven over plain HTTP."""

from __future__ import annotations

import json
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

DOOR = "Note: the door code is 4817. What is the door code?"  # the README's prompt: answered with 4817
RAINBOW = "Name three colours of the rainbow."
# AMB settings for one request that change what the model says (every other layer, every token
# fused with the bank at full weight): answers that depend on the bank's contents
STRONG_PACE = {"layers": list(range(2, 28, 2)), "theta_low": 0.0, "theta_high": 1.0, "alpha": 1.0}
PACE_GGUF = [sys.executable, "-m", "pace_gguf"]


class Server:
    """A `pace-gguf serve --port 0` process, ready for requests; its stderr goes to a file."""

    def __init__(self, command: list[str], tmp_path: Path, *args: str):
        self.stderr_path = tmp_path / "server.stderr"
        with open(self.stderr_path, "w") as stderr:
            self.proc = subprocess.Popen([*command, "serve", "--port", "0", "--n-ctx", "1024", *args],
                                         stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=tmp_path)
        self.url = self._printed_url(timeout=120)
        self._wait_ready(timeout=60)

    def _printed_url(self, timeout: float) -> str:
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                self.stop()
                pytest.fail(f"no address printed within {timeout} s: {self.stderr()}")
        url = self.proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1"), (url, self.stderr())
        return url

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=10) as response:
                    assert json.load(response)["data"], "no model listed"
                    return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise

    def post(self, path: str, body, content_type: str = "application/json"):
        """(status, JSON reply); `body`: a dict sent as JSON, or raw bytes."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    def chat(self, content: str, pace=None, **params) -> str:
        status, reply = self.post("/chat/completions", _chat_body(content, pace, **params))
        assert status == 200, reply
        return reply["choices"][0]["message"]["content"]

    def stream(self, path: str, body: dict) -> list[dict]:
        """The chunks of a streamed answer (server-sent events), checking the closing [DONE]."""
        request = urllib.request.Request(self.url + path, data=json.dumps(dict(body, stream=True)).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            events = [line[len("data: "):] for line in response.read().decode().splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]", events
        return [json.loads(event) for event in events[:-1]]

    def stream_chat(self, content: str, pace=None, **params) -> str:
        chunks = self.stream("/chat/completions", _chat_body(content, pace, **params))
        return "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.proc.kill()
            self.proc.stdout.close()


def _chat_body(content: str, pace=None, **params) -> dict:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 16}
    return dict(body, **params, **({"pace": pace} if pace is not None else {}))


@pytest.fixture(scope="module")
def server(default_model_path, tmp_path_factory):
    """One server for the module: the default model (given as MODEL), AMB on layers 12 and 26."""
    srv = Server(PACE_GGUF, tmp_path_factory.mktemp("serve"), str(default_model_path), "--amb-layers", "12,26")
    yield srv
    srv.stop()


@pytest.mark.slow
def test_chat_completion_answers_the_planted_fact(server):
    assert "4817" in server.chat(DOOR)


@pytest.mark.slow
def test_streamed_chat_completion_carries_the_answer(server):
    assert "4817" in server.stream_chat(DOOR)


@pytest.mark.slow
def test_text_completion_plain_and_streamed(server):
    body = {"prompt": "Note: the door code is 4817. The door code is", "temperature": 0, "max_tokens": 8}
    status, reply = server.post("/completions", body)
    assert status == 200, reply
    assert "4817" in reply["choices"][0]["text"]
    streamed = "".join(chunk["choices"][0]["text"] for chunk in server.stream("/completions", body))
    assert streamed == reply["choices"][0]["text"]


@pytest.mark.slow
def test_request_pace_applies_to_that_request_only(server):
    default = server.chat(RAINBOW)
    assert server.chat(RAINBOW, pace=STRONG_PACE) != default  # the request's settings are used ...
    assert server.chat(RAINBOW) == default  # ... and the server's come back for the next request
    assert "4817" in server.chat(DOOR, pace=False)  # false: the server's settings, switched off


@pytest.mark.slow
def test_concurrent_requests_equal_the_same_requests_alone(server):
    """Requests with different AMB settings, plain and streamed, at once: each answer is what the
    same request gives alone, so neither settings nor bank contents pass between requests."""
    requests = [
        (server.chat, DOOR, None),
        (server.stream_chat, RAINBOW, STRONG_PACE),
        (server.stream_chat, DOOR, None),
        (server.chat, RAINBOW, STRONG_PACE),
    ]
    alone = [ask(content, pace) for ask, content, pace in requests]
    together: list = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def run(i: int) -> None:
        ask, content, pace = requests[i]
        start.wait()
        together[i] = ask(content, pace)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert together == alone
    assert alone[0] == alone[2] and alone[1] == alone[3]  # streamed and plain agree


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pace", "fragment"),
    [
        ({"theta_high": 2}, "theta_high"),
        ({"layers": [99]}, "layer 99"),
        ({"layers": 12}, "layers must be a list"),
        ({"enabled": "yes"}, "enabled must be true or false"),
        ({"bank": 5}, "unknown AMB setting(s): bank"),
        ("on", "expected an object of AMB settings"),
    ],
)
def test_invalid_pace_is_a_400_naming_the_setting(server, pace, fragment):
    for path, body in (("/chat/completions", _chat_body(DOOR, pace)), ("/completions", {"prompt": "Hi", "pace": pace})):
        status, reply = server.post(path, body)
        assert status == 400, reply
        assert fragment in reply["error"]["message"] and reply["error"]["param"] == "pace", reply
        assert reply["error"]["type"] == "invalid_request_error"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "content_type", "fragment"),
    [
        (b'{"messages": [', "application/json", "not valid JSON"),
        (b"\xff\xfe", "application/json", "not valid JSON"),
        (json.dumps(_chat_body(DOOR)).encode(), "text/plain", "send it as application/json"),
        (json.dumps(_chat_body(DOOR, max_tokens="many")).encode(), "application/json", "max_tokens"),
        (b"[1, 2]", "application/json", "valid dictionary"),
    ],
)
def test_invalid_request_is_a_400_not_a_500(server, body, content_type, fragment):
    status, reply = server.post("/chat/completions", body, content_type)
    assert status == 400, reply
    assert fragment in reply["error"]["message"], reply


@pytest.mark.slow
def test_server_carries_on_after_bad_requests_without_traceback(server):
    assert server.post("/chat/completions", b"{", "application/json")[0] == 400
    assert "4817" in server.chat(DOOR)
    assert "Traceback" not in server.stderr()


@pytest.mark.slow
def test_example_client(default_model_path, tmp_path):
    example = Path(__file__).resolve().parents[1] / "examples" / "serve_client.py"
    result = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "4817" in result.stdout


@pytest.mark.slow
def test_sigint_while_streaming_ends_promptly(default_model_path, tmp_path):
    srv = Server(PACE_GGUF, tmp_path)
    body = json.dumps(_chat_body("Write a long story about a dragon.", max_tokens=400, stream=True)).encode()
    request = urllib.request.Request(srv.url + "/chat/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        assert response.readline().startswith(b"data: ")  # the answer is under way
        started = time.monotonic()
        assert srv.stop(signal.SIGINT) == 130
    assert time.monotonic() - started < 20
    assert "Traceback" not in srv.stderr() and "pace-gguf: interrupted" in srv.stderr()


@pytest.mark.slow
def test_sigterm_ends_cleanly(default_model_path, tmp_path):
    srv = Server(PACE_GGUF, tmp_path, "--amb-layers", "12,26")
    assert "4817" in srv.chat(DOOR)
    assert srv.stop(signal.SIGTERM) == 128 + signal.SIGTERM
    assert "Traceback" not in srv.stderr() and "pace-gguf: terminated (SIGTERM)" in srv.stderr()


# --- command line errors (no model is loaded) -------------------------------------------------------


def test_busy_port_is_one_error_line(run_cli, assert_one_line_error):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        result = run_cli("serve", "--port", str(busy.getsockname()[1]))
    assert_one_line_error(result, "cannot listen on 127.0.0.1 port")


def test_two_models_is_one_error_line(run_cli, assert_one_line_error):
    assert_one_line_error(run_cli("serve", "a.gguf", "-m", "b.gguf"), "two models given")


def test_missing_server_extra_is_one_error_line(assert_one_line_error, tmp_path):
    code = "import sys; sys.modules['uvicorn'] = None; from pace_gguf.cli import main; sys.exit(main(['serve']))"
    # cwd outside the checkout: `python -c` puts the cwd first on sys.path (the source tree has no library)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert_one_line_error(result, 'pip install "pace-gguf[server]"')
