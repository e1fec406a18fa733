"""Ask `pace-gguf serve` a question over plain HTTP (urllib: nothing to install), with the
Activation Memory Bank on layers 12 and 26 for this request only, and print the answer as it streams in.

    .venv/bin/python examples/serve_client.py "Note: the door code is 4817. What is the door code?"
    .venv/bin/python examples/serve_client.py --url http://127.0.0.1:8000/v1 "Name three planets."

Without --url it starts `pace-gguf serve --port 0` (the default model) itself, and stops it at the end.
"""

import argparse
import json
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager, nullcontext


@contextmanager
def started_server():
    """A `pace-gguf serve` on a free port; yields its address, which it prints once the model is loaded."""
    command = [sys.executable, "-m", "pace_gguf", "serve", "--port", "0", "--n-ctx", "2048"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        if not url:
            sys.exit("the server did not start (its message is above)")
        yield url
    finally:
        server.terminate()
        server.wait()


def stream_answer(url: str, question: str):
    body = {
        "model": "smollm2-135m-instruct",  # OpenAI clients send one; the server answers with the model it has
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": 128,
        "stream": True,
        "pace": {"layers": [12, 26]},  # pace-gguf's extra field: this request's AMB settings
    }
    request = urllib.request.Request(f"{url}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as response:
            for line in response:  # server-sent events: "data: <chunk>" lines, then "data: [DONE]"
                line = line.decode().strip()
                if line.startswith("data: ") and line != "data: [DONE]":
                    yield json.loads(line[len("data: "):])["choices"][0]["delta"].get("content") or ""
    except urllib.error.HTTPError as exc:  # e.g. 400 for invalid settings, with an OpenAI-style message
        sys.exit(f"the server refused the request: {json.load(exc)['error']['message']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="*", help="default: the README's door-code question")
    parser.add_argument("--url", help="a running server's address, e.g. http://127.0.0.1:8000/v1")
    args = parser.parse_args()
    question = " ".join(args.question) or "Note: the door code is 4817. What is the door code?"
    with nullcontext(args.url) if args.url else started_server() as url:
        for piece in stream_answer(url, question):
            print(piece, end="", flush=True)
        print()


if __name__ == "__main__":
    main()
