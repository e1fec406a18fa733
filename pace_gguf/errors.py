"""Errors pace-gguf raises for problems a user can fix (bad file, bad name, bad parameter).

The CLI prints them as one line, without a traceback; anything else is a bug and keeps its traceback.
"""


class PaceError(Exception):
    """Base class: a problem with the user's input or environment, explained in the message."""


class ModelFileError(PaceError, ValueError):
    """A model file that is missing, unreadable, not GGUF, or truncated."""


class RegistryError(PaceError, LookupError):
    """An unknown model name, or a registry download that failed or did not match its checksum."""


class NativeLibraryError(PaceError, RuntimeError):
    """The patched llama.cpp library is missing, or a different libllama was already loaded."""


class ContextCreationError(PaceError, ValueError):
    """A context llama.cpp could not create for a loaded model (usually: its KV cache, sized by
    n_ctx, does not fit in memory)."""


class ContextOverflowError(PaceError, ValueError):
    """Input that does not fit in the context window (never truncated silently)."""


class DocumentError(PaceError, ValueError):
    """An input document that is missing, unreadable, empty, binary or in an encoding we cannot read."""
