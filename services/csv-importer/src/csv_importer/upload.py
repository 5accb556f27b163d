"""A multipart/form-data upload streamed to a spool file: never whole in memory.

python-multipart's streaming parser hands over the body piece by piece as it arrives; the
``file`` part goes straight to disk while the text fields (small, bounded) are kept. On the way
the file's lines are counted (``rows_total`` of the job) and its UTF-8 validity is checked, so
``encoding=auto`` can decide on the whole file rather than on its head.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header

HEAD_BYTES = 64 * 1024
"""Bytes of the file kept for detecting its format."""
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 32
FILE_FIELD = "file"


def remove_spool_file(path: Path | str) -> None:
    """Delete a spooled upload (quick, local disk); a missing file is fine."""
    with contextlib.suppress(OSError):
        Path(path).unlink(missing_ok=True)


def prepare_spool_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def spool_file_present(path: Path | str) -> bool:
    return Path(path).is_file()


class UploadProblem(Exception):
    """The request is not an acceptable upload: ``status`` and a message naming the field."""

    def __init__(self, status: int, message: str, field_name: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field_name


@dataclass
class Upload:
    """What arrived: the text fields, and the file as written to ``path``."""

    path: Path
    fields: dict[str, str] = field(default_factory=dict)
    filename: str = ""
    size: int = 0
    newlines: int = 0
    ends_with_newline: bool = True
    head: bytes = b""
    utf8_valid: bool = True
    has_file: bool = False

    def line_count(self) -> int:
        """Lines in the file (a last line without a newline counts)."""
        return self.newlines + (0 if self.ends_with_newline or not self.size else 1)


class _Receiver:
    """python-multipart callbacks: one part at a time, file data to disk."""

    def __init__(self, upload: Upload, max_bytes: int) -> None:
        self.upload = upload
        self.max_bytes = max_bytes
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._is_file = False
        self._value = bytearray()
        self._out: IO[bytes] | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    # headers
    def on_part_begin(self) -> None:
        self._headers = {}
        self._value = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in params:
            raise UploadProblem(400, "a multipart part has no Content-Disposition form-data name")
        self._name = params[b"name"].decode("utf-8", errors="replace")
        self._is_file = self._name == FILE_FIELD
        if self._is_file:
            if self.upload.has_file:
                raise UploadProblem(422, "only one file may be uploaded per job", FILE_FIELD)
            self.upload.has_file = True
            self.upload.filename = params.get(b"filename", b"").decode("utf-8", errors="replace")
            self._out = self.upload.path.open("wb")
        elif len(self.upload.fields) >= MAX_FIELDS:
            raise UploadProblem(422, f"more than {MAX_FIELDS} form fields")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        piece = data[start:end]
        if not self._is_file:
            self._value += piece
            if len(self._value) > MAX_FIELD_BYTES:
                raise UploadProblem(
                    413, f"form field {self._name} is larger than {MAX_FIELD_BYTES} bytes"
                )
            return
        upload = self.upload
        upload.size += len(piece)
        if upload.size > self.max_bytes:
            raise UploadProblem(413, f"the file is larger than {self.max_bytes} bytes", FILE_FIELD)
        assert self._out is not None
        self._out.write(piece)
        upload.newlines += piece.count(b"\n")
        if piece:
            upload.ends_with_newline = piece.endswith(b"\n")
        if len(upload.head) < HEAD_BYTES:
            upload.head += piece[: HEAD_BYTES - len(upload.head)]
        if upload.utf8_valid:
            try:
                self._decoder.decode(piece)
            except UnicodeDecodeError:
                upload.utf8_valid = False

    def on_part_end(self) -> None:
        if self._is_file:
            if self.upload.utf8_valid:
                try:
                    self._decoder.decode(b"", final=True)
                except UnicodeDecodeError:
                    self.upload.utf8_valid = False
            self.close()
        else:
            self.upload.fields[self._name] = self._value.decode("utf-8", errors="replace")

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


async def receive_upload(
    content_type: str | None,
    body: AsyncIterator[bytes],
    path: Path,
    max_bytes: int,
    idle_timeout: float | None = None,
) -> Upload:
    """Stream a multipart body to ``path``; ``UploadProblem`` when it is not a usable upload
    (the partial file is then removed), 408 when the body stalls for ``idle_timeout`` s."""
    mime, params = parse_options_header(content_type or "")
    if mime != b"multipart/form-data" or b"boundary" not in params:
        raise UploadProblem(
            415, "Content-Type must be multipart/form-data with a boundary (curl -F file=@x.csv)"
        )
    upload = Upload(path)
    receiver = _Receiver(upload, max_bytes)
    callbacks = {
        name: getattr(receiver, name)
        for name in (
            "on_part_begin",
            "on_part_data",
            "on_part_end",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
        )
    }
    parser = MultipartParser(params[b"boundary"], callbacks)  # type: ignore[arg-type]
    chunks = aiter(body)
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(anext(chunks), idle_timeout)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise UploadProblem(
                    408, f"the upload sent nothing for {idle_timeout:g} s; it was abandoned"
                ) from None
            parser.write(chunk)
        parser.finalize()
    except UploadProblem:
        receiver.close()
        remove_spool_file(path)
        raise
    except Exception as exc:
        receiver.close()
        remove_spool_file(path)
        raise UploadProblem(400, f"the multipart body is malformed: {exc}") from None
    receiver.close()
    if not upload.has_file:
        remove_spool_file(path)
        raise UploadProblem(422, "the form has no file field (send the CSV as file=@…)", FILE_FIELD)
    return upload
