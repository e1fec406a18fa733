"""Input documents for `ask`, `summarize` and chat's `/file`: text files in any common encoding,
Markdown, source code, and PDF (through pypdf, the optional extra `pdf`).

Every input that cannot be read as text raises `DocumentError` with one line that names it and says
why: missing, unreadable, a folder, a FIFO or device, too big, empty, binary, in an encoding that
could not be recognised, or a PDF that is broken, encrypted or has no text layer. Nothing is decoded
by guesswork into junk: bytes that are not UTF-8 go to charset_normalizer, which refuses binary data.
"""

from __future__ import annotations

import codecs
import io
import logging
import os
import stat
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import DocumentError

# Far more than any context holds (1M tokens are about 4 MiB of text); refuses a disk image or a
# video given by mistake before reading it into memory.
MAX_BYTES = 256 * 2**20

STDIN_NAME = "<stdin>"
TEXT_NAME = "<text>"

MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})
CODE_SUFFIXES = frozenset(
    ".py .pyi .c .h .cc .cpp .cxx .hpp .hh .cu .rs .go .java .kt .kts .scala .swift .m .mm .cs .fs .js .mjs .cjs "
    ".ts .tsx .jsx .vue .svelte .rb .php .pl .pm .lua .r .jl .hs .ml .ex .exs .erl .clj .dart .zig .nim .sh .bash "
    ".zsh .fish .ps1 .bat .sql .html .htm .css .scss .xml .json .yaml .yml .toml .ini .cmake .proto .tex".split()
)
CODE_NAMES = frozenset({"makefile", "gnumakefile", "dockerfile", "cmakelists.txt"})

# Byte-order marks and the codec that reads (and drops) each. UTF-32-LE's mark begins with
# UTF-16-LE's, so UTF-32 is tried first.
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32", "UTF-32"), (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF8, "utf-8-sig", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"), (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"),
)

PDF_MAGIC = b"%PDF-"


@dataclass(frozen=True)
class Document:
    name: str  # the path as given, "<stdin>" or "<text>"
    text: str  # decoded text, newlines normalised to "\n"
    kind: str  # "text", "markdown", "code" or "pdf"


def load_sources(source) -> list[Document]:
    """Documents from `source`: a str (the text itself), an os.PathLike (a file; Path("-") reads
    stdin), a Document, or a list/tuple of these."""
    if isinstance(source, (list, tuple)):
        documents = [document for item in source for document in load_sources(item)]
        if not documents:
            raise DocumentError("no documents given")
        return documents
    if isinstance(source, Document):
        return [source]
    if isinstance(source, str):
        return [text_document(source)]
    if isinstance(source, os.PathLike):
        return [read_path(source)]
    raise TypeError(f"a document source is a str (the text), a path, a Document or a list of them, not {type(source).__name__}")


def text_document(text: str, name: str = TEXT_NAME) -> Document:
    """A Document of text given directly (not read from a file)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. from undecodable bytes in argv
        raise DocumentError(f"{name}: not valid UTF-8 text") from None
    return _checked(Document(name, _normalise_newlines(text), "text"))


def read_path(path: os.PathLike | str) -> Document:
    """One file as a Document; "-" reads standard input."""
    name = os.fsdecode(os.fspath(path))
    if name == "-":
        return _document(STDIN_NAME, _read_stdin(), "text")
    return _document(name, _read_file(name), kind_of(name))


def kind_of(name: str) -> str:
    """The kind a file's name implies: "markdown", "code", "pdf" or "text"."""
    path = Path(name)
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return "pdf"
    if suffix in MARKDOWN_SUFFIXES:
        return "markdown"
    if suffix in CODE_SUFFIXES or path.name.lower() in CODE_NAMES:
        return "code"
    return "text"


# --- reading bytes -------------------------------------------------------------------------------


def _read_file(name: str) -> bytes:
    try:
        info = os.stat(name)
    except (FileNotFoundError, NotADirectoryError):
        raise DocumentError(f"{name}: no such file") from None
    except OSError as exc:
        raise DocumentError(f"{name}: cannot read it: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise DocumentError(f"{name}: is a folder; give the files in it")
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device: reading could block forever or never end
        raise DocumentError(f"{name}: not a regular file (a pipe or a device?); give a file")
    _check_size(name, info.st_size)
    try:
        with open(name, "rb") as f:
            data = f.read(MAX_BYTES + 1)  # the file may have grown since stat
    except OSError as exc:
        raise DocumentError(f"{name}: cannot read it: {exc.strerror or exc}") from None
    _check_size(name, len(data))
    return data


def _read_stdin() -> bytes:
    if sys.stdin is None:
        raise DocumentError(f"{STDIN_NAME}: standard input is closed")
    stream = getattr(sys.stdin, "buffer", None)
    try:
        data = stream.read(MAX_BYTES + 1) if stream else sys.stdin.read(MAX_BYTES + 1).encode("utf-8", "surrogateescape")
    except OSError as exc:
        raise DocumentError(f"{STDIN_NAME}: cannot read standard input: {exc.strerror or exc}") from None
    _check_size(STDIN_NAME, len(data))
    return data


def _check_size(name: str, size: int) -> None:
    if size > MAX_BYTES:
        raise DocumentError(f"{name}: too big ({size / 2**20:.0f} MiB or more; the limit is {MAX_BYTES // 2**20} MiB)")


# --- bytes to text -------------------------------------------------------------------------------


def _document(name: str, data: bytes, kind: str) -> Document:
    if not data:
        raise DocumentError(f"{name}: empty, nothing to read")
    if kind == "pdf" or data.startswith(PDF_MAGIC):  # a PDF read from stdin or without its suffix too
        return _checked(Document(name, _normalise_newlines(_pdf_text(name, data)), "pdf"))
    return _checked(Document(name, _normalise_newlines(_decode(name, data)), kind))


def _checked(document: Document) -> Document:
    if not document.text.strip():
        raise DocumentError(f"{document.name}: only whitespace, nothing to read")
    return document


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _decode(name: str, data: bytes) -> str:
    for bom, codec, label in BOMS:
        if data.startswith(bom):
            try:
                text = data.decode(codec)
            except UnicodeDecodeError:
                raise DocumentError(f"{name}: starts with a {label} byte-order mark but is not valid {label}") from None
            return _not_binary(name, text)
    if b"\0" in data:  # no text in UTF-8 or a legacy 8-bit encoding has NUL bytes; images, archives, GGUFs do
        raise _binary(name)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    import charset_normalizer  # noqa: PLC0415 (only for the rare file that is not UTF-8)

    match = charset_normalizer.from_bytes(data).best()
    if match is None:  # binary data, or no encoding decodes it into plausible text
        raise DocumentError(f"{name}: not UTF-8, and not text in any encoding recognised (binary?); "
                            "if it is text, convert it to UTF-8, e.g. with iconv")
    return _not_binary(name, str(match))


def _not_binary(name: str, text: str) -> str:
    if "\0" in text:
        raise _binary(name)
    return text


def _binary(name: str) -> DocumentError:
    return DocumentError(f"{name}: binary file, not text")


# --- PDF -----------------------------------------------------------------------------------------


def _pdf_text(name: str, data: bytes) -> str:
    """The text of each page, joined by blank lines."""
    try:
        import pypdf  # noqa: PLC0415 (an optional extra)
    except ImportError:
        raise DocumentError(f'{name}: reading PDF needs pypdf: pip install "pace-gguf[pdf]"') from None
    with _quiet_logger("pypdf"):  # its warnings about damaged files would come before our one line
        try:
            pages = [page.extract_text() for page in pypdf.PdfReader(io.BytesIO(data)).pages]
        except pypdf.errors.FileNotDecryptedError:
            raise DocumentError(f"{name}: the PDF is encrypted (needs a password); give a decrypted copy") from None
        except Exception as exc:  # noqa: BLE001
            # pypdf parses untrusted bytes: besides its PdfReadError, a damaged file can make it
            # raise ValueError, KeyError, IndexError, ... Each of them means the file is unreadable.
            raise DocumentError(f"{name}: not a readable PDF (truncated or damaged?): {exc}") from None
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if not text:
        raise DocumentError(f"{name}: the PDF has no text, only images (a scan?); run OCR on it first, e.g. ocrmypdf")
    return text


@contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
