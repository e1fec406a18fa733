"""Errors of the converter (user-fixable input problems, printed by the CLI as one line)."""

from pace_gguf.errors import PaceError


class ConvertError(PaceError, ValueError):
    """Bad converter input (missing or damaged files, unsupported model, bad options) or a failed step."""
