"""The image files `cnnspec predict` is given on its command line: files, folders (their
images, recursively, hidden ones left out) and globs whose `**` does not follow symlinks.
"""
from __future__ import annotations

import fnmatch
import glob
import os
from pathlib import Path

from cnnspec.data.images import IMAGE_SUFFIXES, is_image_file, note
from cnnspec.errors import CnnspecError, on_one_line


class NoImagesError(CnnspecError):
    exit_code = 2


def find_images(patterns: list[str]) -> list[str]:
    """Every image named by `patterns`: a file (taken as given, whatever its suffix), a
    folder (its image files, recursively) or a glob (`**` recurses). Sorted within each
    pattern, in the order the patterns came; a path given twice is listed once."""
    found: list[str] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_file():
            found.append(pattern)
        elif path.is_dir():
            images, others = _images_in(path)
            if not images:
                only = f"only {others}; " if others else ""
                raise NoImagesError(f"{pattern}: no image files in this folder ({only}{IMAGE_SUFFIX_WORDS})")
            found += images
        elif glob.has_magic(pattern):
            matches = sorted(glob_matches(pattern))
            if not matches:
                raise NoImagesError(f"{pattern}: no file matches this pattern")
            for match in matches:
                found += _images_in(Path(match))[0] if Path(match).is_dir() else [match]
        elif path.exists():
            raise NoImagesError(f"{pattern}: not a regular file or folder")
        else:
            raise NoImagesError(f"{pattern}: no such file or folder")
    # one row a file however it was named (photos/a.png, ./photos/a.png, a link to it)
    unique, seen = [], set()
    for name in found:
        real = os.path.realpath(name)
        if real not in seen:
            seen.add(real)
            unique.append(name)
    if not unique:
        raise NoImagesError(f"no image files in {' '.join(patterns)} ({IMAGE_SUFFIX_WORDS})")
    return unique


def glob_matches(pattern: str) -> list[str]:
    """glob.glob(pattern, recursive=True), except that `**` never enters a symlinked
    folder: glob's does, and two links to a parent folder make it run for ever (it
    stops only where the kernel refuses 40 links in a row, after 2**40 paths)."""
    if "**" not in pattern:
        return glob.glob(pattern)
    parts = [part for part in pattern.split(os.sep) if part]
    start = os.sep if pattern.startswith(os.sep) else ""
    return list(_matches_below(start, parts))


def _matches_below(folder: str, parts: list[str]):
    """The paths under `folder` ('' for the working folder) that `parts` match, one
    pattern part per path part; hidden names only where the part starts with a dot, as
    glob does."""
    part, rest = parts[0], parts[1:]
    if part == "**":
        for below in _real_folders(folder):
            if rest:
                yield from _matches_below(below, rest)
            else:
                yield from (os.path.join(below, name) for name in _names_in(below) if not name.startswith("."))
    elif glob.has_magic(part):
        for name in _names_in(folder):
            if fnmatch.fnmatch(name, part) and (part.startswith(".") or not name.startswith(".")):
                path = os.path.join(folder, name)
                if not rest:
                    yield path
                elif os.path.isdir(path):
                    yield from _matches_below(path, rest)
    else:
        path = os.path.join(folder, part)
        if not rest and os.path.lexists(path):
            yield path
        elif rest and os.path.isdir(path):
            yield from _matches_below(path, rest)


def _names_in(folder: str) -> list[str]:
    try:
        return sorted(os.listdir(folder or os.curdir))
    except OSError:
        return []


def _real_folders(folder: str):
    """`folder` and every folder below it that is neither hidden nor reached through a
    symlink."""
    waiting = [folder]
    while waiting:
        current = waiting.pop()
        yield current
        for name in reversed(_names_in(current)):
            path = os.path.join(current, name)
            if not name.startswith(".") and os.path.isdir(path) and not os.path.islink(path):
                waiting.append(path)


IMAGE_SUFFIX_WORDS = "suffixes: " + " ".join(IMAGE_SUFFIXES)


def _images_in(folder: Path) -> tuple[list[str], str]:
    """The image files below `folder`, sorted, and a count of the other files ('' when
    none). Hidden files and folders are left out, as preprocess leaves them out: a Mac
    writes an `._IMG_1.jpg` of metadata beside each photo it copies to a USB stick. The
    other files are counted by suffix, so that photos in a format cnnspec does not read
    (an iPhone's .heic) are not skipped unsaid."""
    images, others = [], []
    for current, folders, names in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        for path in (os.path.join(current, name) for name in names if not name.startswith(".")):
            if os.path.isfile(path):
                (images if is_image_file(path) else others).append(path)
    suffixes = sorted({on_one_line(Path(path).suffix.lower()) or "no suffix" for path in others})
    counted = (f"{len(others):,} file{'s' if len(others) > 1 else ''} without an image suffix "
               f"({', '.join(suffixes[:5])}{', ...' if len(suffixes) > 5 else ''})") if others else ""
    if images and counted:
        note(f"{folder}: {counted} not read")
    return sorted(images), counted
