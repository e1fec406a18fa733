"""Answer a question about a file of any length, streaming the answer, then say how it was read.

    .venv/bin/python examples/long_file_qa.py report.txt "What was the budget?" [--strategy stream]

Without arguments it writes a demo file (about 3,000 tokens with one planted fact) and asks about it.
"""

import argparse
import random
import tempfile
from pathlib import Path

from pace_gguf import Llama


def demo_file() -> Path:
    rng = random.Random(0)
    words = "the river town market people walked along old stone bridge while merchants sold bread".split()
    paragraphs = [" ".join(rng.choice(words) for _ in range(60)).capitalize() + "." for _ in range(40)]
    paragraphs.insert(25, "Note: the door code is 4817.")
    path = Path(tempfile.gettempdir()) / "pace-gguf-demo.txt"
    path.write_text("\n\n".join(paragraphs))
    return path


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("file", nargs="?", type=Path)
parser.add_argument("question", nargs="?", default="What is the door code?")
parser.add_argument("--strategy", default="auto", help="auto, direct, map-reduce, refine, stream or error")
args = parser.parse_args()

# The AMB on layers 12 and 26 (0-based); n_ctx=0 takes the model's training context (8k for SmolLM2).
llm = Llama(model_path="smollm2-135m-instruct", n_ctx=0, verbose=False, pace={"layers": (12, 26)})
answer = llm.ask(args.file or demo_file(), args.question, strategy=args.strategy, max_tokens=64, stream=True)
for piece in answer:
    print(piece, end="", flush=True)
print()
print(answer.result.summary_line())
