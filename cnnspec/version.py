"""Which cnnspec this is: files handed between teammates name the version that wrote them
(a checkpoint's cnnspec_version, an export's cnnspec.version), and an error about a file
this version cannot read names both."""
from __future__ import annotations

import re

VERSION_PATTERN = re.compile(r"[0-9][0-9A-Za-z.+-]{0,39}")  # what a recorded version may be shown as


def cnnspec_version() -> str:
    """This cnnspec's version, as installed ("unknown" when run from a bare source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cnnspec")
    except PackageNotFoundError:
        return "unknown"


def shown_version(value) -> str | None:
    """`value` when it reads as a version (a file may hold anything there), else None."""
    return value if isinstance(value, str) and VERSION_PATTERN.fullmatch(value) else None
