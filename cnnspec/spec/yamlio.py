"""Safe YAML loading that remembers where every key and value is written.

`load_yaml(text, file)` parses with a `yaml.SafeLoader` subclass and returns
plain data whose mappings and lists are `LocatedDict` / `LocatedList`: ordinary
dicts and lists that also carry the 1-based line and column of each key, value
and item, so a later check can say `specs/x.yaml:14:7: ...`.

Three differences from `yaml.safe_load`:
- `1e-4`, `5E3` are floats (YAML 1.1 wants a dot and would give a string);
- a key written twice in one mapping is an error, not a silent overwrite;
- every YAML error becomes a one-line `SpecError` with file:line:col.
"""
from __future__ import annotations

import math
import re

import yaml

from cnnspec.errors import SpecError
from cnnspec.regular_files import not_a_regular_file
from cnnspec.spec.nodes import Location

# Generous bounds that no real spec comes near; they turn hostile input (deep
# nesting, alias bombs) into an error instead of a hang or a RecursionError.
MAX_DEPTH = 64
MAX_NODES = 200_000
MAX_BYTES = 1 << 20   # a spec or params file; the largest shipped spec is a few kilobytes


def read_bounded_text(path, limit: int = MAX_BYTES) -> str:
    """The text of a regular file of at most `limit` bytes. A device, FIFO, socket or
    folder is refused before it is opened (reading one could block or never end), a
    larger file before it is parsed; each is a one-line SpecError naming the file."""
    file = str(path)
    problem = not_a_regular_file(path)
    if problem == "missing":
        raise SpecError("cannot read: No such file or directory", file)
    if problem:
        raise SpecError(f"cannot read: it is {problem}, not a regular file", file)
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as error:
        raise SpecError(f"cannot read: {error.strerror or error}", file) from None
    if len(data) > limit:
        raise SpecError(f"the file is larger than {limit:,} bytes: not a spec or params file "
                        f"cnnspec reads", file)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise SpecError(f"not UTF-8 text (byte 0x{data[error.start]:02x})", file, line) from None


class LocatedDict(dict):
    """A dict that knows where it, each of its keys and each value are written."""

    def __init__(self, *args, where: Location | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.where = where or Location(None)
        self.key_where: dict = {}
        self.value_where: dict = {}

    def where_of(self, key) -> Location:
        """Where the value of `key` is written (the mapping itself if unknown)."""
        return self.value_where.get(key) or self.key_where.get(key) or self.where

    def changed(self, drop=(), **values) -> LocatedDict:
        """A copy without the keys in `drop` and with `values` set, each written where the
        original's was."""
        copy = LocatedDict({key: value for key, value in self.items() if key not in drop}, where=self.where)
        copy.update(values)
        copy.key_where = {key: where for key, where in self.key_where.items() if key not in drop}
        copy.value_where = {key: where for key, where in self.value_where.items() if key not in drop}
        return copy


class LocatedList(list):
    """A list that knows where it and each of its items are written."""

    def __init__(self, *args, where: Location | None = None, item_where=None):
        super().__init__(*args)
        self.where = where or Location(None)
        self.item_where: list[Location] = list(item_where or [])

    def where_of(self, index: int) -> Location:
        if 0 <= index < len(self.item_where):
            return self.item_where[index]
        return self.where


def plain(data):
    """Located containers -> ordinary dicts and lists (for options, params, checkpoints)."""
    if isinstance(data, dict):
        return {key: plain(value) for key, value in data.items()}
    if isinstance(data, list):
        return [plain(item) for item in data]
    return data


def where_in(container, key) -> Location:
    """Where `container[key]` is written, for any container (located or not)."""
    where_of = getattr(container, "where_of", None)
    return where_of(key) if where_of else Location(None)


# `1e-4`, `-2.5E+3`, `1_000e3`: an exponent with or without a dot.
EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class LocatingLoader(yaml.SafeLoader):
    """SafeLoader that builds LocatedDict/LocatedList (`refuse_duplicate_keys` checks what it
    composes first)."""

    file: str | None = None
    composed = 0        # nodes so far, an alias counting as every node of what it names
    nesting = 0
    sizes: dict         # id(node) -> nodes in it, for aliases

    def compose_node(self, parent, index):
        """Count nodes and nesting while the document is composed, so a huge, deeply
        nested or alias-bombed document stops before it is built (PyYAML's composer
        recurses once per level)."""
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            self.count(self.sizes.get(id(node), 1), node)
            return node
        self.nesting += 1
        if self.nesting > MAX_DEPTH:
            where = self.location(self.peek_event().start_mark)
            raise SpecError(f"nesting deeper than {MAX_DEPTH} levels", where.file, where.line, where.col)
        before = self.composed
        node = super().compose_node(parent, index)
        self.nesting -= 1
        self.count(1, node)
        self.sizes[id(node)] = self.composed - before
        return node

    def count(self, nodes: int, node) -> None:
        self.composed += nodes
        if self.composed > MAX_NODES:
            where = self.location(node.start_mark)
            raise SpecError(f"the document is too large (more than {MAX_NODES:,} values, "
                            f"aliases counted each time they are used)", where.file, where.line, where.col)

    def location(self, mark) -> Location:
        return Location(self.file, mark.line + 1, mark.column + 1)

    def value_location(self, node) -> Location:
        """Where a value starts; a quoted scalar's text starts one column after its quote."""
        where = self.location(node.start_mark)
        quoted = isinstance(node, yaml.ScalarNode) and node.style in ('"', "'")
        return Location(where.file, where.line, where.col, quoted=True) if quoted else where


# add_implicit_resolver copies the class's resolver table first, so SafeLoader
# itself (and yaml.safe_load elsewhere) is unchanged.
LocatingLoader.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_FLOAT,
                                     list("-+0123456789"))


def construct_located_mapping(loader: LocatingLoader, node: yaml.MappingNode) -> LocatedDict:
    # Merge keys (`<<: *base`) are refused rather than half-supported: which key wins,
    # and where each came from, would be hard to tell in an error message.
    mapping = LocatedDict(where=loader.location(node.start_mark))
    for key_node, value_node in node.value:
        key_where = loader.location(key_node.start_mark)
        if key_node.tag == "tag:yaml.org,2002:merge":
            raise SpecError("'<<' merge keys are not supported: write the options out (a spec's "
                            "`defaults:` or a block shares them)", key_where.file, key_where.line, key_where.col)
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise SpecError(f"keys must be text, not {type(key).__name__} {key!r}",
                            key_where.file, key_where.line, key_where.col)
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_where[key] = key_where
        mapping.value_where[key] = loader.value_location(value_node)
    return mapping


STR_TAG = "tag:yaml.org,2002:str"


def refuse_duplicate_keys(root: yaml.Node, loader: LocatingLoader) -> None:
    """The first key, in the order the file is written, that its mapping already holds: a
    SpecError naming its path (`layers[2].dense.units`), found in the composed document
    before anything is built. A node shared through an alias is named where it is first
    reached."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    duplicates = []  # (line, col, path, first line)
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        children = []
        if isinstance(node, yaml.SequenceNode):
            children = [(child, f"{path}[{index}]") for index, child in enumerate(node.value)]
        elif isinstance(node, yaml.MappingNode):
            first_line: dict[str, int] = {}
            for key_node, value_node in node.value:
                if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == STR_TAG):
                    continue  # the constructor refuses keys that are not text
                key = key_node.value
                key_path = f"{path}.{key}" if path else key
                if key in first_line:
                    mark = key_node.start_mark
                    duplicates.append((mark.line, mark.column, key_path, first_line[key]))
                else:
                    first_line[key] = key_node.start_mark.line + 1
                children.append((value_node, key_path))
        stack.extend(reversed(children))  # taken in the order they are written
    if duplicates:
        line, col, path, first = min(duplicates)
        raise SpecError(f"duplicate key (first written on line {first})", loader.file, line + 1, col + 1, path)


def construct_located_sequence(loader: LocatingLoader, node: yaml.SequenceNode) -> LocatedList:
    items = [loader.construct_object(child, deep=True) for child in node.value]
    places = [loader.value_location(child) for child in node.value]
    return LocatedList(items, where=loader.location(node.start_mark), item_where=places)


def construct_number(loader: LocatingLoader, node: yaml.ScalarNode):
    """Numbers as PyYAML reads them, but a spec or params file holds only finite numbers
    of sane length: `.nan`, `.inf` and a 5,000-digit integer are located errors."""
    where = loader.location(node.start_mark)
    reader = (yaml.SafeLoader.construct_yaml_int if node.tag.endswith(":int")
              else yaml.SafeLoader.construct_yaml_float)
    try:
        value = reader(loader, node)
    except ValueError as failure:  # Python refuses int() of more than 4,300 digits
        raise SpecError(f"{describe_scalar(node.value)} is not a usable number ({failure})",
                        where.file, where.line, where.col) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(f"{node.value} is not a finite number", where.file, where.line, where.col)
    return value


LocatingLoader.add_constructor("tag:yaml.org,2002:int", construct_number)
LocatingLoader.add_constructor("tag:yaml.org,2002:float", construct_number)
LocatingLoader.add_constructor("tag:yaml.org,2002:map", construct_located_mapping)
LocatingLoader.add_constructor("tag:yaml.org,2002:seq", construct_located_sequence)


# PyYAML's words for the mistakes people make most, and what they usually mean.
YAML_HINTS = (
    ("expected <block end>, but found", "check this line's indentation: a key or '-' item lines up with "
                                        "the ones above it that belong to the same list or mapping"),
    ("mapping values are not allowed here", "a value that holds ': ' needs quotes; otherwise this line is "
                                            "indented deeper than the key above it"),
    ("found character '\\t' that cannot start any token", "YAML indents with spaces, not tabs"),
)


def yaml_error_to_spec_error(error: yaml.YAMLError, file: str | None) -> SpecError:
    problem_mark = getattr(error, "problem_mark", None)
    context_mark = getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    mark = problem_mark or context_mark
    if context and context_mark:
        if "<stream end>" in problem:   # an unclosed bracket: point at where it opened
            mark = context_mark
        else:
            context += f" that starts on line {context_mark.line + 1}"
    message = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
    message += next((f"; {hint}" for start, hint in YAML_HINTS if problem.startswith(start)), "")
    message = message.replace("\n", " ")
    if mark is None:
        return SpecError(message, file)
    return SpecError(message, file, mark.line + 1, mark.column + 1)


def check_size(data, file: str | None) -> None:
    """Refuse documents nested deeper than MAX_DEPTH or with more than MAX_NODES
    values (aliases count each time they are used)."""
    stack = [(data, 1)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise SpecError(f"the document is too large (more than {MAX_NODES:,} values)", file)
        if isinstance(value, (dict, list)) and depth > MAX_DEPTH:
            where = getattr(value, "where", Location(file))
            raise SpecError(f"nesting deeper than {MAX_DEPTH} levels", where.file,
                            where.line, where.col)
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)


def load_located(text: str, file: str | None = None) -> tuple[object, Location]:
    """Parse one YAML document into located data, and where its top value starts."""
    if len(text) > MAX_BYTES:
        raise SpecError(f"the document is too large (more than {MAX_BYTES:,} characters)", file)
    try:
        loader = LocatingLoader(text)  # the reader refuses control characters right here
    except yaml.reader.ReaderError as error:
        line = text.count("\n", 0, error.position) + 1
        col = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        code = error.character if isinstance(error.character, int) else ord(error.character)
        raise SpecError(f"invalid YAML: the control character U+{code:04X} is not allowed",
                        file, line, col) from None
    loader.file = file
    loader.sizes = {}
    try:
        node = loader.get_single_node()
        if node is not None:
            refuse_duplicate_keys(node, loader)
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as error:
        raise yaml_error_to_spec_error(error, file) from None
    except RecursionError:
        raise SpecError(f"nesting deeper than {MAX_DEPTH} levels", file) from None
    finally:
        loader.dispose()
    check_size(data, file)
    return data, (Location(file, 1, 1) if node is None else loader.location(node.start_mark))


def load_yaml(text: str, file: str | None = None):
    """Parse one YAML document into located data; any problem is a SpecError."""
    return load_located(text, file)[0]


def load_mapping(text: str, file: str | None = None, what: str = "spec") -> LocatedDict:
    """Parse a document whose top level must be a non-empty mapping."""
    data, where = load_located(text, file)
    if data is None:
        raise SpecError(f"the {what} is empty", file, 1, 1)
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a single value ({describe_scalar(data)})"
        raise SpecError(f"the top level of a {what} must be a mapping of keys, not {kind}",
                        file, where.line, where.col)
    return data


def describe_scalar(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
