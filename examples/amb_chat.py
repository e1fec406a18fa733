"""Chat with the Activation Memory Bank on two layers, then show what the banks hold.

    .venv/bin/python examples/amb_chat.py "Note: the door code is 4817. What is the door code?"
"""

import sys

from pace_gguf import Llama

question = " ".join(sys.argv[1:]) or "Note: the door code is 4817. What is the door code?"
# Layers are 0-based; (12, 26) is the spec's default pair. A dict changes the model's pace.amb.* defaults.
llm = Llama(model_path="smollm2-135m-instruct", n_ctx=2048, seed=0, verbose=False, pace={"layers": (12, 26)})
out = llm.create_chat_completion(messages=[{"role": "user", "content": question}], temperature=0, max_tokens=64)
print(out["choices"][0]["message"]["content"])
print(f"AMB: {llm.pace.mode} mode, {llm.pace.granularity} granularity, {llm.amb_memory_bytes / 2**20:.1f} MiB of banks")
for stats in llm.memory_stats().values():
    print(" ", stats)
llm.reset_memory()  # before an unrelated document
