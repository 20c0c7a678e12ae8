"""Reading a torch file someone may have handed over (a checkpoint, a state dict, a
resume state) without letting it cost more than its size.

    state = load_torch_file(path)   # UnsafeTorchFile: why it was refused, in words

Before torch.load: a regular file, and a zip archive (what torch.save writes) with a small
directory and entries stored as torch.save stores them. After it: tensors that claim no
more bytes than the file holds. torch.load itself runs with weights_only=True, so a
pickle that wants to run code is refused; `refusal_words` words that refusal without
torch's advice to load it anyway.
"""
from __future__ import annotations

import os
import pickle
import struct
import warnings
import zipfile

import torch

from cnnspec.errors import first_line
from cnnspec.regular_files import not_a_regular_file

ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive
# torch.save writes one zip entry per tensor storage plus a few, each about 100 bytes in
# the zip's directory: these bounds leave room for tens of thousands of tensors.
MAX_ZIP_ENTRIES = 50_000
MAX_ZIP_DIRECTORY_BYTES = 8 << 20
ZIP_SLACK_BYTES = 1 << 16
END_RECORD, ZIP64_LOCATOR, ZIP64_END_RECORD = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"


def torch_file_problem(path) -> str | None:
    """Why `path` must not be handed to torch.load, in words, or None. Every reader of a
    torch file (checkpoint, state dict, resume state) asks this first. It must be a
    regular file (a FIFO blocks, a device never ends). A zip archive, what torch.save
    writes, must have a small directory and entries stored uncompressed, as torch.save
    stores them, that unpack to no more than the file holds: a compressed entry can
    unpack to gigabytes from a file of a megabyte. A file that is not a zip archive, or
    one whose directory does not read, is left to torch.load, which refuses it."""
    kind = not_a_regular_file(path)
    if kind:
        return f"it is {kind}, not a regular file"
    with open(path, "rb") as file:
        if file.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
            return None
    problem = zip_directory_problem(path)
    if problem:
        return problem
    size = os.path.getsize(path)
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error):
        return None
    if len(entries) > MAX_ZIP_ENTRIES:
        return f"its zip archive holds {len(entries):,} entries (at most {MAX_ZIP_ENTRIES:,})"
    compressed = next((entry for entry in entries if entry.compress_type != zipfile.ZIP_STORED), None)
    if compressed is not None:
        return (f"its zip entry {compressed.filename[:80]} is compressed: torch.save stores every entry "
                f"as it is, and a compressed one can unpack to far more than the file's size")
    unpacked = sum(entry.file_size for entry in entries)
    if unpacked > size + ZIP_SLACK_BYTES:
        return f"its zip entries unpack to {unpacked:,} bytes, more than the file's {size:,}"
    return None


def zip_directory_problem(path) -> str | None:
    """Whether the zip archive at `path` announces a directory too large to read, asked
    before zipfile reads it (and builds an object for every entry)."""
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        directory_bytes = zip_directory_bytes(file, size)
    if directory_bytes is not None and directory_bytes > MAX_ZIP_DIRECTORY_BYTES:
        return (f"its zip directory takes {directory_bytes:,} bytes (torch.save's take at most "
                f"{MAX_ZIP_DIRECTORY_BYTES:,})")
    return None


def zip_directory_bytes(file, size: int) -> int | None:
    """The size of the zip's central directory as its end record (zip64's when there is
    one) announces it, read before zipfile builds an object for every entry; None when
    there is no end record."""
    tail_size = min(size, 22 + 65535)  # the end record, then a comment of up to 64 KiB
    file.seek(size - tail_size)
    tail = file.read(tail_size)
    end = tail.rfind(END_RECORD)
    if end < 0 or end + 22 > len(tail):
        return None
    (directory_bytes,) = struct.unpack_from("<I", tail, end + 12)
    locator = end - 20
    if locator >= 0 and tail[locator:locator + 4] == ZIP64_LOCATOR:
        (offset,) = struct.unpack_from("<Q", tail, locator + 8)
        file.seek(min(offset, size))
        record = file.read(56)
        if len(record) == 56 and record.startswith(ZIP64_END_RECORD):
            (directory_bytes,) = struct.unpack_from("<Q", record, 40)
    return directory_bytes


MAX_LOADED_VALUES = 1_000_000  # dicts, lists and tensors in one torch file: a resume state holds a few thousand


def claimed_bytes_problem(loaded, path) -> str | None:
    """Why what torch.load gave cannot be what the file at `path` holds, or None. Every
    tensor's elements are counted, once per place it appears: a tensor of stride 0
    (expand) or one storage named under many keys claims far more than the file stores,
    and the first reader to touch every element (the digest, the NaN check) would
    allocate or compute on all of it."""
    budget = os.path.getsize(path) + ZIP_SLACK_BYTES
    claimed, seen, stack = 0, 0, [loaded]
    while stack:
        value = stack.pop()
        seen += 1
        if seen > MAX_LOADED_VALUES:
            return f"it holds more than {MAX_LOADED_VALUES:,} values"
        if isinstance(value, torch.Tensor):
            claimed += value.numel() * value.element_size()
            if claimed > budget:
                return (f"its tensors claim more than the file's {budget - ZIP_SLACK_BYTES:,} bytes (data "
                        f"repeated or shared under many names)")
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return None


class UnsafeTorchFile(ValueError):
    """A torch file that must not reach torch.load, or whose tensors claim more than it
    stores: the reason, in words."""


def load_torch_file(path):
    """torch.load(weights_only=True) of a file someone may have handed over (a checkpoint,
    a state dict, a resume state), asked torch_file_problem before and
    claimed_bytes_problem after: their answers are an UnsafeTorchFile. torch's own errors
    on damaged or hostile bytes pass through, for each reader to word."""
    problem = torch_file_problem(path)
    if problem:
        raise UnsafeTorchFile(problem)
    with warnings.catch_warnings():  # torch's warnings about odd pickles: the reader's line says it
        warnings.simplefilter("ignore")
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    problem = claimed_bytes_problem(loaded, path)
    if problem:
        raise UnsafeTorchFile(problem)
    return loaded


def refusal_words(error: Exception) -> str:
    """torch.load's error in one short line. Its refusal of a pickle that wants to run
    code advises loading with weights_only=False, which would run that code: never
    repeat that advice about a file someone handed over."""
    said = first_line(error).split(". ")[0]
    if isinstance(error, pickle.UnpicklingError) and said.startswith("Weights only load failed"):
        return "it asks to run code or build objects other than tensors and plain values"
    return said
