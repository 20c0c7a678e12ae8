"""What a folder or CSV dataset holds, before any image is decoded: the image paths (each
checked to lie inside data.source), their class names and the splits they are in.

    listing = scan_folder("photos")                  # or scan_csv("labels.csv", data["csv"])
    classes, splits = assign_splits(listing, "auto", 0.2, seed=0)

Layouts (docs/datasets.md):
- folder: `root/<class>/<any depth>/<image>`, or the same under `root/train/`,
  `root/test/` and optionally `root/val/`.
- csv: a manifest with a path column and a label column (and optionally a split
  column of train / val / test); paths are relative to the CSV's folder.
"""
from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnspec.data.datasets import SPLITS, stratified_split, val_fraction
from cnnspec.data.images import IMAGE_SUFFIXES, is_image_file
from cnnspec.errors import DataError, control_character, listed_names


@dataclass
class Listing:
    """What a source holds, before decoding: one entry per image (plain strings, about
    150 bytes an image: the only memory that grows with the dataset)."""

    paths: list[str] = field(default_factory=list)    # checked to lie in the source
    labels: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)   # "train" | "val" | "test" | "" (not given)
    places: list[str] | None = None                   # csv: "labels.csv:12: a.jpg" for messages

    def add(self, path, label: str, split: str, place: str | None = None) -> None:
        _refuse_a_name_not_in_utf8(Path(path))
        self.paths.append(str(path))
        self.labels.append(sys.intern(label))
        self.splits.append(split)
        if place is not None:
            self.places = [] if self.places is None else self.places
            self.places.append(place)

    def sort_by_path(self) -> None:
        """Entries in path order, as a folder's scan lists them: the split and the arrays
        then depend on which images a CSV lists, not on the order of its rows. A NUL, which
        no name holds, for the separator: the order of Path's parts, in a string per image."""
        order = sorted(range(len(self.paths)), key=lambda i: self.paths[i].replace(os.sep, "\0"))
        self.paths, self.labels, self.splits = ([column[i] for i in order]
                                                for column in (self.paths, self.labels, self.splits))
        if self.places is not None:
            self.places = [self.places[i] for i in order]

    def name(self, index: int) -> str:
        """How messages name an image: its path, or its CSV line and path."""
        return self.places[index] if self.places is not None else self.paths[index]


def _refuse_a_name_not_in_utf8(path: Path) -> None:
    """A file or folder name whose bytes are not UTF-8 (Python holds them as surrogates)
    cannot be written to meta.json or printed by the later stages: refuse it here, named
    with its bytes escaped."""
    for depth, part in enumerate(path.parts, start=1):
        try:
            part.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(Path(*path.parts[:depth])).decode("utf-8", "backslashreplace")
            raise DataError(f"{shown}: the name is not valid UTF-8 text; rename it (cnnspec writes "
                            "class names and paths to meta.json and its reports as UTF-8)") from None


# ---------------------------------------------------------------------------------------
# Paths that must stay inside the source.

def _allowed_roots(root: Path) -> list[Path]:
    """The source itself, and a DVC cache above it (`cache.type: symlink` links there)."""
    roots = [root.resolve()]
    for parent in [Path.cwd(), *Path.cwd().parents]:
        if (parent / ".dvc").is_dir():
            roots.append((parent / ".dvc" / "cache").resolve())
            break
    return roots


def _inside(path: Path, roots: list[Path]) -> bool:
    try:
        resolved = path.resolve()
    except (RuntimeError, OSError):  # a symlink loop leads nowhere: read_image names it
        return True
    return any(resolved == root or root in resolved.parents for root in roots)


def _escape_error(name: str, where: str) -> DataError:
    return DataError(f"{name}: {where} leads outside data.source; copy the image into it instead")


# ---------------------------------------------------------------------------------------
# Folder layout.

def _images_under(folder: Path, roots: list[Path], display: Path) -> tuple[list[Path], list[Path]]:
    """Image files under `folder` at any depth, sorted, and the other files.
    Hidden files are left out; a symlink (file or folder) leading outside is an error."""
    found, others = [], []
    for current, dirnames, filenames in os.walk(folder, followlinks=False):
        current = Path(current)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in dirnames:
            if (current / name).is_symlink() and not _inside(current / name, roots):
                raise _escape_error(str(display / (current / name).relative_to(folder)), "a symlinked folder")
        for name in filenames:
            path = current / name
            if name.startswith("."):
                continue
            if path.is_symlink() and not _inside(path, roots):
                raise _escape_error(str(display / path.relative_to(folder)), "a symlink")
            if is_image_file(path):
                found.append(path)
            else:
                others.append(path)
    return sorted(found), others


# Folder names of a source that is already split, as datasets ship them (Kaggle's
# valid/, TensorFlow's validation/, Train/ and Test/), in any case.
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "testing": "test"}


def split_folders(root: Path, subfolders: list[str]) -> dict[str, str]:
    """{folder name: split} when `root`'s subfolders are a train split and others
    (SPLIT_NAMES), else {} (class folders). Split folders beside class folders, or two
    folders of one split, are a DataError: taken as classes they would train a model
    that tells the splits apart."""
    splits = {name: SPLIT_NAMES[name.lower()] for name in subfolders if name.lower() in SPLIT_NAMES}
    if "train" not in splits.values():
        if len(splits) >= 2 and len(splits) == len(subfolders):
            raise DataError(f"data.source: {root} holds split folders ({', '.join(splits)}) but no train/: "
                            "add train/ with the class folders, or keep one folder per class")
        return {}
    others = [name for name in subfolders if name not in splits]
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise DataError(f"data.source: {root} holds split folders ({', '.join(splits)}) beside other "
                        f"folders ({shown}): keep either one folder per class, or train/ and test/ "
                        "(and val/) each holding the class folders")
    for split in SPLITS:
        named = [name for name, found in splits.items() if found == split]
        if len(named) > 1:
            raise DataError(f"data.source: {root}: {' and '.join(named)} are both the {split} split; "
                            "merge them into one folder")
    return dict(sorted(splits.items(), key=lambda item: SPLITS.index(item[1])))


def scan_folder(source) -> Listing:
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"data.source: {root} is not a folder (data.dataset: folder wants a folder "
                        "with one subfolder per class)")
    roots = _allowed_roots(root)
    subfolders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    splits = split_folders(root, subfolders)
    parts = [(split, root / name) for name, split in splits.items()] if splits else [("", root)]
    listing = Listing()
    ignored = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]  # not in a class
    for split, folder in parts:
        class_folders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_folders:
            raise DataError(f"{folder}: no class subfolders; expected {folder}/<class name>/<images>")
        if len(class_folders) == 1 and not split:
            _refuse_a_folder_one_level_too_high(class_folders[0])
        for class_folder in class_folders:
            _refuse_a_class_name_that_does_not_print(class_folder)
            if class_folder.is_symlink() and not _inside(class_folder, roots):
                raise _escape_error(str(class_folder), "a symlinked class folder")
            images, others = _images_under(class_folder, roots, class_folder)
            ignored += others
            if not images:
                held = f", only {_by_suffix(others)}" if others else ""
                raise DataError(f"{class_folder}: empty class folder (no {'/'.join(IMAGE_SUFFIXES)} "
                                f"files{held}); add images or remove it")
            for path in images:
                listing.add(path, class_folder.name, split)
    if ignored:
        print(f"{root}: ignored {_by_suffix(ignored)} outside the class folders or not images "
              f"(images are {' '.join(IMAGE_SUFFIXES)})")
    return listing


def _by_suffix(paths: list[Path]) -> str:
    """'3 files (.heic, .txt)': how many, and of which kinds (a photo format cnnspec does
    not read, an iPhone's .heic, should not go unsaid)."""
    suffixes = sorted({path.suffix.lower() or "no suffix" for path in paths})
    shown = ", ".join(suffixes[:5]) + (", ..." if len(suffixes) > 5 else "")
    return f"{len(paths):,} file{'s' * (len(paths) != 1)} ({shown})"


def _refuse_a_class_name_that_does_not_print(class_folder: Path) -> None:
    """A class folder named with a control character or line break: the name would be
    printed raw by predict's table and CSV."""
    _refuse_a_name_not_in_utf8(class_folder)  # bytes that are not UTF-8 are their own mistake
    control = control_character(class_folder.name)
    if control is not None:
        shown = str(class_folder.parent / repr(class_folder.name)[1:-1])
        raise DataError(f"{shown}: the class folder's name holds the control character U+{ord(control):04X}; "
                        "a class name cannot, rename the folder")


def _refuse_a_folder_one_level_too_high(only_class: Path) -> None:
    """One class folder holding only folders: data.source names the folder above the
    class folders (data/wrap rather than data/wrap/photos)."""
    entries = [p for p in only_class.iterdir() if not p.name.startswith(".")]
    if entries and all(p.is_dir() for p in entries):
        shown = ", ".join(sorted(p.name for p in entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise DataError(f"data.source: only one class ('{only_class.name}'), a folder holding only folders "
                        f"({shown}); if those are the classes, set data.source={only_class}")


# ---------------------------------------------------------------------------------------
# CSV layout.

# Characters in one line of a CSV manifest (a path, a label and a split take a few
# hundred). csv's own field limit fires only after the whole line is in memory: a 2 GB
# file without a line break cost 4.2 GB before it did.
MAX_CSV_LINE = 1 << 20


def _bounded_lines(file, manifest: Path):
    """The lines of `file`, each read no further than MAX_CSV_LINE characters: a longer
    one is refused, naming its line."""
    number = 0
    while line := file.readline(MAX_CSV_LINE + 2):  # + 2: room for its \r\n
        number += 1
        if len(line.rstrip("\r\n")) > MAX_CSV_LINE:
            raise DataError(f"{manifest}:{number}: a line longer than {MAX_CSV_LINE:,} characters; "
                            "is data.source the CSV manifest?")
        yield line


def scan_csv(source, columns: dict) -> Listing:
    manifest = Path(source)
    if not manifest.is_file():
        raise DataError(f"data.source: {manifest} is not a file (data.dataset: csv wants a CSV manifest)")
    root = manifest.parent
    roots = _allowed_roots(root)
    path_column, label_column = columns["path_column"], columns["label_column"]
    split_column = columns.get("split_column") or ""
    listing, first_line = Listing(), {}
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(_bounded_lines(file, manifest))
            header = reader.fieldnames or []
            missing = [(key, column) for key, column in (("path_column", path_column),
                                                         ("label_column", label_column),
                                                         ("split_column", split_column))
                       if column and column not in header]
            if missing:
                key, column = missing[0]
                raise DataError(f"{manifest}:1: no column '{column}' (data.csv.{key}); "
                                f"the header has: {', '.join(header) or 'nothing'}"
                                f"{_spaces_around(column, header) or _columns_to_set(missing, header)}")
            for row in reader:
                line = _first_line(reader, row)
                where = f"{manifest}:{line}"
                extra = row.pop(None, None) or []  # DictReader's fields beyond the header's
                if any((value or "").strip() for value in extra):  # empty ones: a trailing comma
                    raise DataError(f"{where}: {len(header) + len(extra)} fields, but the header has "
                                    f"{len(header)}; quote a value that holds a comma")
                if not any((value or "").strip() for value in row.values()):
                    continue  # a blank line
                text = (row.get(path_column) or "").strip()
                label = (row.get(label_column) or "").strip()
                split = (row.get(split_column) or "").strip().lower() if split_column else ""
                if not text:
                    raise DataError(f"{where}: empty {path_column}")
                for column, value, kind in ((path_column, text, "a file name"), (label_column, label, "a class name")):
                    control = (control_character(value) if kind == "a class name"
                               else next((c for c in value if ord(c) < 32 or ord(c) == 127), None))
                    if control is not None:  # before any message quotes the value: one line each
                        raise DataError(f"{where}: {column} holds the control character "
                                        f"U+{ord(control):04X} ({value!r}); {kind} cannot")
                if not label:
                    raise DataError(f"{where}: empty {label_column} for {text}")
                if split not in ("", *SPLITS):
                    raise DataError(f"{where}: {split_column} {split!r} must be train, val or test")
                relative = Path(text)
                if relative.is_absolute():
                    raise DataError(f"{where}: {text}: absolute path; paths are relative to {root}/")
                path = root / relative
                if not _inside(path, roots):
                    raise _escape_error(f"{where}: {text}", "the path")
                key = os.path.normpath(text)
                if key in first_line:
                    raise DataError(f"{where}: {text}: duplicate path, first listed on line {first_line[key]}")
                first_line[key] = line
                listing.add(path, label, split, place=f"{where}: {text}")
    except UnicodeDecodeError as error:
        raise DataError(f"{manifest}: not UTF-8 text ({error.reason})") from None
    except csv.Error as error:
        raise DataError(f"{manifest}: not a readable CSV ({error})") from None
    if split_column and "" in listing.splits and set(listing.splits) != {""}:
        line = [i for i, s in enumerate(listing.splits) if s == ""][0]
        raise DataError(f"{listing.name(line)}: empty {split_column}; give every row a split or none")
    _name_paths_written_from_elsewhere(listing, root)
    listing.sort_by_path()
    return listing


# Header names manifests use for the image and the class (Kaggle's, fastai's, Keras'),
# lower-cased: what `_columns_to_set` offers for a missing path or label column.
LIKELY_COLUMNS = {
    "path_column": ("path", "filename", "file", "file_name", "filepath", "file_path", "image",
                    "image_path", "image_name", "image_id", "img", "fname", "name"),
    "label_column": ("label", "class", "labels", "class_name", "category", "target", "y"),
}


def _columns_to_set(missing: list[tuple[str, str]], header: list[str]) -> str:
    """For a header that names its columns otherwise (`filename,class`), the -S settings
    that read it, every missing column at once; '' when a column has no likely name."""
    chosen = {}  # key -> header name; one column serves one key
    for key, _ in missing:
        found = next((name for likely in LIKELY_COLUMNS.get(key, ()) for name in header
                      if name.lower() == likely and name not in chosen.values()), None)
        if found is None:
            return ""
        chosen[key] = found
    return "; to read it: " + " ".join(f"-S data.csv.{key}={name}" for key, name in chosen.items())


def _spaces_around(column: str, header: list[str]) -> str:
    """The hint for a header written with ', ' between its names (' label')."""
    spaced = next((name for name in header if name.strip() == column), None)
    if spaced is None:
        return ""
    return (f"; the header's names have spaces around them ({spaced!r}): write the header "
            "with a bare comma between names")


def _name_paths_written_from_elsewhere(listing: Listing, root: Path) -> None:
    """The first missing image, when its path as written names a file once its Windows
    backslashes are slashes, or from the working folder: a manifest written from the
    repository root rather than from its own folder."""
    missing = next((i for i, path in enumerate(listing.paths) if not os.path.lexists(path)), None)
    if missing is None:
        return
    written = Path(listing.paths[missing]).relative_to(root)
    with_slashes = str(written).replace("\\", "/")
    if with_slashes != str(written) and os.path.lexists(root / with_slashes):
        raise DataError(f"{listing.name(missing)}: no such file, but there is {with_slashes}: write the "
                        "CSV's paths with / (a \\ is part of a file name here, not a folder separator)")
    if written.is_file():
        raise DataError(f"{listing.name(missing)}: not in {root}/, but there is such a file from the working "
                        f"folder: paths in the CSV are relative to the CSV's own folder ({root}/)")


def _first_line(reader, row: dict) -> int:
    """The line a CSV record starts on: the reader counts to its end, and a quoted field
    can hold line breaks."""
    values = [item for value in row.values() for item in (value if isinstance(value, list) else [value])]
    return reader.line_num - sum(item.count("\n") for item in values if isinstance(item, str))


# ---------------------------------------------------------------------------------------
# Classes and splits.

def _name_classes_missing_from_a_split(classes, ids, split_indices, strict: bool) -> None:
    """A class missing from a split the other classes are in is named with its counts: a
    warning; an error when `strict` (data.bad_images: fail) and the class has fewer images
    than there are splits, so that no split fraction could give it a place in each."""
    counts = {split: np.bincount(ids[indices], minlength=len(classes))
              for split, indices in split_indices.items()}
    used = [split for split in SPLITS if counts[split].sum() > 0]  # val_split 0: no val at all
    for index, name in enumerate(classes):
        if all(counts[split][index] > 0 for split in used):
            continue
        per_split = ", ".join(f"{split} {int(counts[split][index])}" for split in SPLITS)
        total = sum(int(counts[split][index]) for split in SPLITS)
        message = (f"data.source: class '{name}' has only {total} image{'s' * (total != 1)}, too few "
                   f"to appear in every split ({per_split})")
        if strict and total < len(used):
            raise DataError(message + "; add images (data.bad_images: fail)")
        print(f"warning: {message}", file=sys.stderr)


def class_order(found: set[str], asked: list[str] | None) -> list[str]:
    """The class names in label order: `data.classes` when it is set (it must name every
    class found, and no other), else alphabetical."""
    if not asked:
        return sorted(found)
    repeated = sorted({name for name in asked if asked.count(name) > 1})
    if repeated:
        raise DataError(f"data.classes: '{repeated[0]}' is listed twice")
    unknown = [name for name in asked if name not in found]
    if unknown:
        raise DataError(f"data.classes: '{unknown[0]}' is not a class of data.source "
                        f"(found: {listed_names(sorted(found))})")
    missing = sorted(found - set(asked))
    if missing:
        raise DataError(f"data.classes: leaves out '{missing[0]}', a class of data.source; "
                        "list every class, in the order you want")
    return list(asked)


def assign_splits(listing: Listing, val_split, test_split: float, seed: int,
                  class_names: list[str] | None = None, strict: bool = False):
    """(classes, {split: (indices into the listing, label ids)}).

    The source's own splits are kept; without a test split, a stratified `test_split`
    is held out (seeded); without a val split, a stratified `val_split` of train (a
    fraction, or auto: datasets.val_fraction).
    `class_names` (data.classes) fixes the label order; alphabetical without it."""
    if not listing.paths:
        raise DataError("data.source: no images found (empty dataset)")
    classes = class_order(set(listing.labels), class_names)
    if len(classes) < 2:
        raise DataError(f"data.source: only one class ('{classes[0]}'); a classifier needs at least two")
    ids = _label_ids(listing.labels, classes)
    given = np.array(listing.splits)
    given_splits = set(listing.splits) - {""}
    if given_splits and "train" not in given_splits:
        raise DataError("data.source: the source is split but has no train split")
    train_pool = np.flatnonzero((given == "train") | (given == ""))
    split_indices = {s: np.flatnonzero(given == s) for s in ("val", "test")}
    if "test" not in given_splits:
        if test_split == 0:
            raise DataError("data.test_split: 0, but data.source has no test split; "
                            "set a fraction such as 0.2 or add a test split")
        keep, held = stratified_split(ids[train_pool], test_split, seed, "data.test_split")
        split_indices["test"], train_pool = train_pool[held], train_pool[keep]
    if "val" not in given_splits:
        keep, held = stratified_split(ids[train_pool], val_fraction(val_split, len(train_pool)), seed)
        split_indices["val"], train_pool = train_pool[held], train_pool[keep]
    split_indices["train"] = train_pool
    in_train = set(ids[train_pool].tolist())
    for split in ("val", "test"):
        missing = sorted(set(ids[split_indices[split]].tolist()) - in_train)
        if missing:
            names = ", ".join(f"'{classes[i]}'" for i in missing)
            raise DataError(f"data.source: class {names} has images in {split} but none in train; "
                            "the model cannot learn a class it never sees")
    _name_classes_missing_from_a_split(classes, ids, split_indices, strict)
    return classes, {s: (np.sort(split_indices[s]), ids[np.sort(split_indices[s])]) for s in SPLITS}


def _label_ids(labels, classes):
    lookup = {name: i for i, name in enumerate(classes)}
    return np.array([lookup[label] for label in labels], dtype=np.int64)
