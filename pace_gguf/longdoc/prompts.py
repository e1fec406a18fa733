"""The instructions of each strategy's model calls, and their rendering through the model's chat
template into token lists with a slot for the document.

The document is tokenized apart, as plain text (`special=False`): a file that contains
"<|im_end|>" cannot end the turn or inject a role. The template parts around it are tokenized with
special tokens, as llama-cpp-python's chat handlers do.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import _llama_cpp_compat as compat

_SLOT = "\x00PACE-DOCUMENT\x00"

LENGTHS = {"short": (3, 160), "medium": (6, 320), "long": (12, 640)}  # name -> (sentences, max tokens)
STYLES = ("paragraph", "bullets")


def summary_instruction(length: str, style: str) -> str:
    sentences = LENGTHS[length][0]
    if style == "bullets":
        return f"as a list of at most {sentences} short bullet points, one per main topic"
    return f"in at most {sentences} sentences, naming each main topic"


# Instruction texts, by task and call kind. {question}, {summary_how}, {part}, {parts} and
# {running} are filled in; the document goes where `_SLOT` is.
_TEMPLATES = {
    ("ask", "direct"): "Read the document below, then answer the question.\n\nDocument:\n{doc}\n\nQuestion: {question}",
    ("ask", "stream"): "Read the document below, then answer the question: {question}\n\nDocument:\n{doc}\n\n"
                       "Question: {question}",
    ("ask", "map"): "Below is part {part} of {parts} of a document. Write down what it says that helps answer the "
                    "question \"{question}\". If it says nothing about it, reply: nothing relevant.\n\n"
                    "Part {part}:\n{doc}\n\nQuestion: {question}",
    ("ask", "reduce"): "Notes taken from the parts of a document:\n\n{doc}\n\nUsing these notes, answer the "
                       "question: {question}",
    ("ask", "refine"): "Question: {question}\n\nAnswer so far, from the earlier parts of a document: {running}\n\n"
                       "Next part of the document:\n{doc}\n\nGive the answer to the question, corrected or completed "
                       "with this part where it helps.",
    ("summarize", "direct"): "Summarize the document below {summary_how}.\n\nDocument:\n{doc}",
    ("summarize", "stream"): "Read the document below, then summarize it.\n\nDocument:\n{doc}\n\n"
                             "Summarize the document {summary_how}.",
    ("summarize", "map"): "Summarize part {part} of {parts} of a document in at most 3 sentences, naming its "
                          "main topic.\n\nPart {part}:\n{doc}",
    ("summarize", "reduce"): "Summaries of consecutive parts of one document:\n\n{doc}\nWrite one summary of the "
                             "whole document {summary_how}, covering every part.",
    ("summarize", "refine"): "Summary of the earlier parts of a document:\n{running}\n\nNext part of the "
                             "document:\n{doc}\n\nRewrite the summary {summary_how} so that it covers this part too.",
}


@dataclass(frozen=True)
class Prompt:
    """Token lists around the document: prefix + document + suffix is the whole prompt."""

    prefix: list[int]
    suffix: list[int]
    stop: tuple[str, ...]

    @property
    def overhead(self) -> int:
        return len(self.prefix) + len(self.suffix)


class PromptBuilder:
    """Renders instructions through the model's chat template (a plain-text layout when it has none)."""

    def __init__(self, llm, system: str | None = None):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # noqa: PLC0415 (llama_cpp is loaded by llm)

        self._llm = llm
        self._system = system
        template = llm.metadata.get("tokenizer.chat_template")
        eos = compat.token_text(llm, llm.token_eos()) if llm.token_eos() != -1 else ""
        bos = compat.token_text(llm, llm.token_bos()) if llm.token_bos() != -1 else ""
        self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos) if template else None
        self._eos = eos

    def build(self, task: str, kind: str, **fields) -> Prompt:
        text = _TEMPLATES[(task, kind)].format(doc=_SLOT, **fields)
        rendered, added_special = self._render(text)
        before, after = rendered.split(_SLOT)
        prefix = self._llm.tokenize(before.encode("utf-8"), add_bos=not added_special, special=True)
        suffix = self._llm.tokenize(after.encode("utf-8"), add_bos=False, special=True)
        return Prompt(prefix, suffix, (self._eos,) if self._eos else ())

    def document_tokens(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def _render(self, user_text: str) -> tuple[str, bool]:
        if self._formatter is None:  # a base model: instruction, then "Answer:"
            system = f"{self._system}\n\n" if self._system else ""
            return f"{system}{user_text}\n\nAnswer:", False
        messages = ([{"role": "system", "content": self._system}] if self._system else []) + [
            {"role": "user", "content": user_text}]
        response = self._formatter(messages=messages)
        return response.prompt, bool(response.added_special)
