"""Chat with the default model through pace_gguf.Llama, the drop-in for llama_cpp.Llama.

    .venv/bin/python examples/chat.py "Name three planets."
"""

import sys

from pace_gguf import Llama
from pace_gguf.registry import DEFAULT_MODEL, pull

question = " ".join(sys.argv[1:]) or "Note: the door code is 4817. What is the door code?"
llm = Llama(model_path=str(pull(DEFAULT_MODEL)), n_ctx=2048, seed=0, verbose=False)
print("build:", llm.build_id)
messages = [{"role": "user", "content": question}]
for chunk in llm.create_chat_completion(messages=messages, temperature=0, max_tokens=128, stream=True):
    print(chunk["choices"][0]["delta"].get("content") or "", end="", flush=True)
print()
