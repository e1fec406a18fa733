"""Summarize a long document on a laptop: map-reduce over pieces that fit the context, with a
progress line per model call and what each piece contributed.

    .venv/bin/python examples/summarize_document.py notes.md [--length short] [--style bullets]

Without arguments it summarizes a small three-section demo text.
"""

import argparse
import sys
from pathlib import Path

from pace_gguf import Llama

DEMO = """## Volcano

The volcano erupted at dawn after weeks of small earthquakes. Lava flowed down its eastern slopes.

## Violin

The violin is the smallest instrument of the string family. It has four strings and is played with a bow.

## Penguin

The penguin is a bird that cannot fly but swims very well. A penguin father keeps the egg warm on his feet.
"""

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("file", nargs="?", type=Path)
parser.add_argument("--length", default="short", choices=["short", "medium", "long"])
parser.add_argument("--style", default="bullets", choices=["paragraph", "bullets"])
args = parser.parse_args()

llm = Llama(model_path="smollm2-135m-instruct", n_ctx=2048, verbose=False)


def progress(p):
    print(f"\r{p.phase}: {p.done}/{p.total} tokens ({p.tokens_per_second:.0f} tok/s)", end="", file=sys.stderr)


# The demo is short; small pieces show the map-reduce steps on it (a real document needs no chunk_tokens).
options = {} if args.file else {"chunk_tokens": 40, "overlap": 0}
result = llm.summarize(args.file or DEMO, strategy="map-reduce", length=args.length, style=args.style,
                       progress=progress, **options)
print(file=sys.stderr)
for chunk in result.chunks:
    print(f"[{chunk.stage} {chunk.index + 1}] {chunk.text[:100]}", file=sys.stderr)
print(result.text)
print(result.summary_line(), file=sys.stderr)
