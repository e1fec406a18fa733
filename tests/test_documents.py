"""pace_gguf.documents: every kind of input read to text, every bad input refused with one clear
DocumentError that names it. Real files in tmp_path, real pypdf; no model."""

from __future__ import annotations

import gzip
import io
import os
import random
import sys
from pathlib import Path

import pytest

from pace_gguf import documents
from pace_gguf.documents import Document, load_sources, read_path
from pace_gguf.errors import DocumentError, PaceError

FRENCH = ("Le café est une boisson très appréciée en France. Chaque matin, des millions de personnes prennent "
          "un café crème au comptoir avant d'aller travailler. Les garçons de café sont célèbres pour leur élégance.\n")


def make_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF written by hand: one page per string, in Helvetica, with a correct xref table."""
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(len(pages)))
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode()]
    font = 3 + 2 * len(pages)
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
                       f"/Resources << /Font << /F1 {font} 0 R >> >> >>".encode())
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


PDF = make_pdf(["The door code is 4817.", "The boat is called Marigold."])


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refused(source, *fragments: str, read=read_path) -> str:
    """The one-line DocumentError for this input; it names the input and says why."""
    with pytest.raises(DocumentError) as info:
        read(source)
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- text in its encodings -----------------------------------------------------------------------


def test_utf8_text_with_crlf_newlines(tmp_path):
    path = write(tmp_path, "notes.txt", "first line\r\nsecond ünïcode line\rthird\n".encode())
    doc = read_path(path)
    assert doc == Document(str(path), "first line\nsecond ünïcode line\nthird\n", "text")


@pytest.mark.parametrize("codec", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-be"])
def test_unicode_with_a_byte_order_mark(tmp_path, codec):
    data = FRENCH.encode(codec)
    if not codec.endswith(("sig", "16", "32")):  # the -le/-be codecs write no mark: add it
        data = ("\ufeff" + FRENCH).encode(codec)
    assert read_path(write(tmp_path, "bom.txt", data)).text == FRENCH


@pytest.mark.parametrize("text, codec", [(FRENCH, "cp1252"), (FRENCH, "latin-1"),
                                         ("Привет! Это проверка кодировки текста на русском языке. " * 3, "cp1251")])
def test_legacy_encodings_are_detected(tmp_path, text, codec):
    assert read_path(write(tmp_path, "old.txt", text.encode(codec))).text == text


@pytest.mark.parametrize("name, kind", [("a.md", "markdown"), ("b.MARKDOWN", "markdown"), ("c.py", "code"),
                                        ("d.rs", "code"), ("Makefile", "code"), ("e.txt", "text"), ("f", "text")])
def test_kind_from_the_name(tmp_path, name, kind):
    assert read_path(write(tmp_path, name, b"# some content\n")).kind == kind


# --- PDF -----------------------------------------------------------------------------------------


def test_pdf_pages_joined_by_blank_lines(tmp_path):
    doc = read_path(write(tmp_path, "paper.PDF", PDF))
    assert doc.kind == "pdf"
    assert doc.text == "The door code is 4817.\n\nThe boat is called Marigold."


def test_pdf_recognised_by_its_header_without_the_suffix(tmp_path):
    assert read_path(write(tmp_path, "download", PDF)).kind == "pdf"


@pytest.mark.parametrize("cut", [len(PDF) - 12, len(PDF) // 2, 20])
def test_truncated_pdf(tmp_path, capfd, cut):
    refused(write(tmp_path, "cut.pdf", PDF[:cut]), "cut.pdf", "not a readable PDF")
    assert capfd.readouterr().err == ""  # pypdf's own warnings are not printed


def test_pdf_suffix_on_something_else(tmp_path):
    refused(write(tmp_path, "fake.pdf", b"this is plain text\n"), "fake.pdf", "not a readable PDF")


def _encrypted(user_password: str) -> bytes:
    import pypdf

    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(PDF)))
    writer.encrypt(user_password, owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_encrypted_pdf(tmp_path):
    refused(write(tmp_path, "locked.pdf", _encrypted("secret")), "locked.pdf", "encrypted")


def test_pdf_encrypted_with_an_empty_password_reads(tmp_path):
    # owner-password-only PDFs (printing/copying restrictions) open without a password
    assert "4817" in read_path(write(tmp_path, "restricted.pdf", _encrypted(""))).text


def test_pdf_without_text(tmp_path):
    import pypdf

    writer = pypdf.PdfWriter()
    writer.add_blank_page(612, 792)  # what a scan looks like to a text extractor: no text objects
    out = io.BytesIO()
    writer.write(out)
    refused(write(tmp_path, "scan.pdf", out.getvalue()), "scan.pdf", "no text", "OCR")


def test_pdf_without_pypdf_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pypdf", None)  # `import pypdf` now raises ImportError
    refused(write(tmp_path, "paper.pdf", PDF), "paper.pdf", 'pip install "pace-gguf[pdf]"')


# --- bad inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, data", [
    ("nul.txt", b"text with a \0 NUL byte\n"),
    ("image.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10"),
    ("notes.txt.gz", gzip.compress(FRENCH.encode() * 20, mtime=0)),
    ("model.gguf", b"GGUF\x03\0\0\0" + bytes(range(256)) * 4),
    ("utf16-no-bom.txt", FRENCH.encode("utf-16-le")),
])
def test_binary_files(tmp_path, name, data):
    refused(write(tmp_path, name, data), name, "binary file")


def test_random_bytes_without_nul_are_not_decoded_as_some_encoding(tmp_path):
    junk = bytes(b or 1 for b in random.Random(0).randbytes(4096))
    refused(write(tmp_path, "junk.dat", junk), "junk.dat", "not UTF-8")


def test_broken_utf16(tmp_path):
    refused(write(tmp_path, "odd.txt", "\ufeffabc".encode("utf-16-le") + b"\x00"), "odd.txt", "not valid UTF-16")


@pytest.mark.parametrize("data, fragment", [(b"", "empty"), (b" \n\t\r\n  ", "only whitespace")])
def test_empty_files(tmp_path, data, fragment):
    refused(write(tmp_path, "blank.txt", data), "blank.txt", fragment)


def test_missing_file(tmp_path):
    refused(tmp_path / "missing.txt", "missing.txt", "no such file")
    refused(write(tmp_path, "file", b"x") / "below", "no such file")


def test_folder(tmp_path):
    refused(tmp_path, str(tmp_path), "is a folder; give the files in it")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path):
    path = write(tmp_path, "secret.txt", b"hidden\n")
    path.chmod(0)
    refused(path, "secret.txt", "Permission denied")


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="Linux only")
def test_read_error(tmp_path):
    # a regular file whose read fails (EIO) for every user, root included
    refused(Path("/proc/self/mem"), "/proc/self/mem", "cannot read it")


def test_fifo_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    refused(fifo, "pipe.txt", "not a regular file")  # opening it would block until a writer came


def test_too_big_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.txt"
    with open(path, "wb") as f:
        f.truncate(documents.MAX_BYTES + 1)  # sparse: no disk space used
    refused(path, "huge.txt", "too big", "256 MiB")


# --- standard input and load_sources ---------------------------------------------------------------


def _stdin(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_stdin(monkeypatch):
    _stdin(monkeypatch, FRENCH.encode("cp1252"))
    assert read_path("-") == Document("<stdin>", FRENCH, "text")


def test_pdf_on_stdin(monkeypatch):
    _stdin(monkeypatch, PDF)
    assert load_sources(Path("-"))[0].kind == "pdf"


def test_stdin_errors(monkeypatch):
    _stdin(monkeypatch, b"\x89PNG\r\n\x1a\n\0\0\0\r")
    refused("-", "<stdin>", "binary file")
    monkeypatch.setattr(sys, "stdin", None)
    refused("-", "<stdin>", "closed")


def test_load_sources_mixes_text_paths_and_documents(tmp_path):
    path = write(tmp_path, "a.md", b"# Title\n")
    ready = Document("mine", "given", "code")
    docs = load_sources(["the text itself\r\n", path, ready])
    assert docs == [Document("<text>", "the text itself\n", "text"), Document(str(path), "# Title\n", "markdown"), ready]
    assert load_sources("- is text here, not stdin") == [Document("<text>", "- is text here, not stdin", "text")]


def test_load_sources_refusals(tmp_path):
    refused([], "no documents", read=load_sources)
    refused("   ", "<text>", "only whitespace", read=load_sources)
    refused("caf\udcff", "<text>", "not valid UTF-8", read=load_sources)
    refused((tmp_path / "gone.txt",), "gone.txt", "no such file", read=load_sources)
    with pytest.raises(TypeError):
        load_sources(b"bytes are neither text nor a path")


def test_document_error_is_a_pace_error():
    # the CLI prints PaceErrors as one `pace-gguf: error:` line
    assert issubclass(DocumentError, PaceError)
