"""Unpack a downloaded tar archive without trusting it.

    safe_extract("data/raw/cifar-10-python.tar.gz", "data/raw/extracted")

An archive is someone else's bytes: every member is checked as its header is read,
before anything is written. A member that could land outside the folder (an absolute
path, '..', a link of any kind, a device), an archive of too many members or nested too
deep, members adding up to more than the bound or the free disk, an extended header too
large to read into memory, or a sparse member is refused in one line naming the
archive (a DataError; a DiskFullError when the disk cannot hold it). The folder appears
complete or not at all.
"""
from __future__ import annotations

import shutil
import tarfile
from pathlib import Path, PurePosixPath

from cnnspec.atomic import atomic_folder, disk_is_full
from cnnspec.errors import DataError, DiskFullError, first_line, one_line

MAX_EXTRACTED_BYTES = 8 << 30   # an archive's members together (CIFAR's: 180 MB)
MAX_MEMBERS = 10_000            # members of an archive (CIFAR-10's: 8, CIFAR-100's: 5)
# Folders a member may lie in (CIFAR's: 1). A thousand nested folders, a 20 KB archive, took
# tarfile's filter half a minute, and shutil.rmtree, recursive, could not remove them.
MAX_MEMBER_DEPTH = 16
# tarfile reads a PAX extended header's or a GNU long name's body into memory before it
# returns the member it describes: a gzip of zeros declared as a 1.5 GB header would cost
# 1.5 GB. Real ones hold a path and a few times, well under this.
MAX_HEADER_BYTES = 64 << 10
MAX_HEADERS_IN_A_ROW = 16       # such headers before one member: each is held until it arrives


class HeaderTooLarge(Exception):
    """An archive's extended header (PAX, GNU long name) larger than MAX_HEADER_BYTES,
    or more than MAX_HEADERS_IN_A_ROW of them before one member."""


class SparseMember(Exception):
    """A GNU sparse member (old GNU type 'S' or a PAX GNU.sparse header): the member's name."""


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile's member header, refusing an extended header too large to read into memory
    and sparse members (tarfile reads both before safe_extract sees the member)."""

    def _proc_member(self, archive):
        extended = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                    tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
        if self.type not in extended:
            archive.cnnspec_headers_in_a_row = 0
            return super()._proc_member(archive)
        if self.size > MAX_HEADER_BYTES:
            raise HeaderTooLarge(f"an extended header of {self.size:,} bytes (more than {MAX_HEADER_BYTES:,})")
        in_a_row = getattr(archive, "cnnspec_headers_in_a_row", 0) + 1
        if in_a_row > MAX_HEADERS_IN_A_ROW:
            raise HeaderTooLarge(f"more than {MAX_HEADERS_IN_A_ROW} extended headers before one member")
        archive.cnnspec_headers_in_a_row = in_a_row
        return super()._proc_member(archive)

    # A dataset archive holds plain files. tarfile reads a sparse member's map into memory
    # while it reads the header, trusting its numbers (a 117 KB map took 3 GB and 86 s, a
    # short one ended in a ValueError), so each GNU sparse format is refused before that.
    def _proc_sparse(self, archive):  # old GNU, type 'S'
        raise SparseMember(self.name)

    def _proc_gnusparse_00(self, member, pax_headers, buf):
        raise SparseMember(pax_headers.get("GNU.sparse.name", member.name))

    def _proc_gnusparse_01(self, member, pax_headers):
        raise SparseMember(pax_headers.get("GNU.sparse.name", member.name))

    def _proc_gnusparse_10(self, member, pax_headers, archive):
        raise SparseMember(pax_headers.get("GNU.sparse.name", member.name))

    def _apply_pax_info(self, pax_headers, encoding, errors):
        # GNU.sparse.name or .realsize without the records above: still a sparse member
        if any(keyword.startswith("GNU.sparse.") for keyword in pax_headers):
            raise SparseMember(pax_headers.get("GNU.sparse.name", self.name))
        super()._apply_pax_info(pax_headers, encoding, errors)


def safe_extract(tar_path, folder) -> Path:
    """Unpack the tar archive `tar_path` into `folder` (replacing it), refusing any
    member that could write outside it (absolute paths, '..', links of any kind,
    devices), archives of more than MAX_MEMBERS members and extended headers of more
    than MAX_HEADER_BYTES. The folder appears complete or not at all."""
    tar_path, folder = Path(tar_path), Path(folder)
    try:
        with tarfile.open(tar_path, "r:*", tarinfo=_BoundedTarInfo) as archive, \
                atomic_folder(folder) as temporary:
            members, total, free = [], 0, _free_space(folder.parent)
            for member in archive:  # one at a time: a million-member archive stops at the cap
                if len(members) == MAX_MEMBERS:
                    raise DataError(f"{tar_path}: refusing an archive of more than {MAX_MEMBERS:,} members "
                                    "(the datasets' hold a few); is data.url the dataset's archive?")
                _check_member(member, tar_path)
                if member.isfile():
                    # now, from the size in its header: reading the next header decompresses its data
                    total += member.size
                    _check_total_size(total, free, tar_path, folder)
                members.append(member)
            archive.extractall(temporary, members=members, filter="data")
    except (DataError, DiskFullError):
        raise
    except HeaderTooLarge as error:
        raise DataError(f"{tar_path}: refusing {error}; is data.url the dataset's archive?") from None
    except SparseMember as error:
        raise DataError(f"{tar_path}: refusing member {error.args[0]!r}: a sparse file; "
                        "a dataset archive holds plain files and folders only") from None
    except tarfile.FilterError as error:  # anything our own check missed
        member = getattr(error, "tarinfo", None)
        name = repr(member.name) if member is not None else "'?'"
        raise DataError(f"{tar_path}: refusing member {name}: {one_line(error)}") from None
    except OSError as error:
        if disk_is_full(error, folder.parent):
            raise DiskFullError(folder) from None  # the archive is fine: keep it
        raise _unreadable(tar_path, error) from None
    except Exception as error:  # noqa: BLE001 - tarfile trusts the numbers in a header: a damaged
        # or hostile one makes it raise ValueError, UnicodeError, zlib.error, LZMAError and more
        raise _unreadable(tar_path, error) from None
    return folder


def _unreadable(tar_path: Path, error: BaseException) -> DataError:
    return DataError(f"{tar_path}: not a readable tar archive: {one_line(first_line(error))}")


def _check_member(member: tarfile.TarInfo, tar_path: Path) -> None:
    def refuse(why: str):
        # repr: a member's name is the archive's author's text, and a line break in it
        # must not print as a line of its own
        raise DataError(f"{tar_path}: refusing member {member.name!r}: {why}")

    if member.name.startswith(("/", "\\")) or PurePosixPath(member.name).is_absolute() \
            or (len(member.name) > 1 and member.name[1] == ":"):
        refuse("absolute path")
    parts = PurePosixPath(member.name.replace("\\", "/")).parts
    if ".." in parts:
        refuse("path contains '..'")
    if len(parts) > MAX_MEMBER_DEPTH + 1:
        refuse(f"{len(parts) - 1:,} folders deep (more than {MAX_MEMBER_DEPTH}); a dataset archive holds a few")
    if member.issym() or member.islnk():
        # The datasets' archives hold files and folders only. Links are refused outright: a
        # chain of links, each harmless on its own, can still lead out (Python's own
        # filter="data" missed one such chain before 3.11.13 and 3.12.11).
        refuse(f"a {'symbolic' if member.issym() else 'hard'} link (to {member.linkname!r}); "
               "a dataset archive holds files and folders only")
    if member.isdev() or not (member.isfile() or member.isdir()):
        refuse("device or special file")


def _free_space(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _check_total_size(total: int, free: int | None, tar_path: Path, folder: Path) -> None:
    """Refuse an archive whose members so far add up to more than MAX_EXTRACTED_BYTES or
    than the free disk space, before anything is written (a gzip of zeros is a tar bomb)."""
    if total > MAX_EXTRACTED_BYTES:
        raise DataError(f"{tar_path}: refusing to extract {total:,} bytes (more than "
                        f"{MAX_EXTRACTED_BYTES:,}); is data.url the dataset's archive?")
    if free is not None and total > free:
        raise DiskFullError(folder, f"the archive holds {total:,} bytes, more than the "
                                    f"{free:,} free")
