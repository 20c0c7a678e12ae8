"""Every bad spec in tests/bad_specs/ fails with one line naming its place and key.

Each file starts with `# expect: LINE [KEY]`: the message must contain
`FILE:LINE:` and KEY. The files in bad_specs/shapes/ are valid specs whose shapes
cannot work; they need the compiler's shape inference.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnspec import cli
from cnnspec.errors import SpecError
from cnnspec.spec.reader import load_spec, parse_spec

HERE = Path(__file__).parent
BAD = sorted((HERE / "bad_specs").glob("*.yaml"))
BAD_SHAPES = sorted((HERE / "bad_specs" / "shapes").glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (\d+)(?: (\S+))?$")


def expectation(path: Path) -> tuple[str, str | None]:
    match = EXPECT.match(path.read_text().splitlines()[0])
    assert match, f"{path.name} must start with '# expect: LINE [KEY]'"
    return match.group(1), match.group(2)


def relative(path: Path) -> str:
    return str(path.relative_to(HERE.parent))


def test_the_corpus_is_large_enough():
    assert len(BAD) >= 35
    assert len(BAD_SHAPES) >= 4


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_spec_names_line_and_key(path):
    line, key = expectation(path)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert "\n" not in message
    assert f"{path}:{line}:" in message, message
    if key:
        assert key in message, message


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_validate_command_prints_one_error_line(path, capsys, monkeypatch):
    monkeypatch.chdir(HERE.parent)
    line, key = expectation(path)
    assert cli.main(["validate", relative(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {relative(path)}:{line}:"), err
    assert key is None or key in lines[0]


def test_cli_process_exits_1_without_traceback():
    """The real command on the whole corpus: one line per spec, no traceback."""
    paths = [relative(p) for p in BAD]
    done = subprocess.run([sys.executable, "-m", "cnnspec.cli", "validate", *paths],
                          cwd=HERE.parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == len(paths)
    for path, line in zip(paths, lines):
        assert line.startswith(f"error: {path}:"), line


@pytest.mark.parametrize("path", BAD_SHAPES, ids=lambda p: p.stem)
def test_impossible_shapes_name_line_and_layer(path, capsys, monkeypatch):
    pytest.importorskip("cnnspec.models.compiler")
    monkeypatch.chdir(HERE.parent)
    load_spec(path)  # the spec itself is valid; only its shapes are wrong
    line, key = expectation(path)
    assert cli.main(["validate", relative(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"{relative(path)}:{line}:" in err[0], err
    assert key is None or key in err[0]


@pytest.mark.parametrize("text, place, hint", [
    ("name: x\nlayers:\n  - conv: 8\n   - flatten\n", "4:4", "check this line's indentation"),
    ("name: x\nlayers:\n  - dense:\n      units: 8\n       activation: relu\n", "5:18",
     "otherwise this line is indented deeper than the key above it"),
    ("name: x\ndescription: net: a test\nlayers: [flatten]\n", "2:17", "a value that holds ': ' needs quotes"),
    ("name: x\nlayers:\n\t- flatten\n", "3:1", "YAML indents with spaces, not tabs"),
])
def test_yaml_layout_mistakes_say_what_usually_causes_them(text, place, hint):
    with pytest.raises(SpecError) as caught:
        parse_spec(text, "x.yaml")
    message = str(caught.value)
    assert message.startswith(f"x.yaml:{place}: invalid YAML: ") and hint in message, message


# ---------------------------------------------------------------- garbled specs

GOOD = """\
name: fuzzed
defaults:
  conv: {padding: same, activation: relu}
blocks:
  conv_bn:
    args: {filters: null, stride: 1}
    layers:
      - conv: {filters: $filters, stride: $stride}
      - bn
layers:
  - use: {block: conv_bn, filters: 8}
  - repeat: {n: 2, layers: [conv: 8, max_pool: 2]}
  - residual: {body: [conv: 8, bn], shortcut: auto}
  - parallel: {branches: [[conv: 4], [conv: 4]]}
  - dropout: 0.25
  - global_avg_pool
  - dense: {units: num_classes, l2: 1e-4}
"""


def garble(text: str, cuts: list[tuple[int, int, str]]) -> str:
    for position, length, insert in cuts:
        position %= len(text) + 1
        text = text[:position] + insert + text[position + length:]
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(GOOD)), st.integers(0, 6),
                          st.sampled_from(["", " ", "-", ":", "\t", "{", "]", "$x", "-2", "\n",
                                           "1e9", "conv", "null", "&a", "*a", "'"])),
                min_size=1, max_size=4))
def test_garbled_spec_parses_or_raises_a_located_spec_error(cuts):
    text = garble(GOOD, cuts)
    try:
        parse_spec(text, "fuzz.yaml")
    except SpecError as error:
        assert error.file == "fuzz.yaml"
        assert error.line is not None and 1 <= error.line <= text.count("\n") + 2, str(error)
        assert "\n" not in str(error)


def test_docs_reliability_counts_the_bad_specs_there_are():
    text = (HERE.parent / "docs" / "reliability.md").read_text(encoding="utf-8")
    stated = re.findall(r"\((\d+) files in `tests/bad_specs/`\), "
                        r"`test_validate_command_prints_one_error_line` \((\d+)\)", text)
    assert stated == [(str(len(BAD)), str(len(BAD)))]


def test_a_fraction_written_as_a_percentage_is_shown_the_fraction(tmp_path):
    spec = tmp_path / "percent.yaml"
    spec.write_text("name: percent\nlayers:\n  - conv: 8\n  - dropout: 50\n  - flatten\n  - dense: num_classes\n")
    with pytest.raises(SpecError, match=r"percent\.yaml:4:\d+: layers\[1\]\.dropout\.rate: 50 is greater than or "
                                        r"equal to the maximum of 1 \(a fraction: for 50% write 0\.5\)$"):
        load_spec(spec)
    spec.write_text("name: percent\nlayers:\n  - conv: 8\n  - dropout: 150\n  - flatten\n  - dense: num_classes\n")
    with pytest.raises(SpecError) as caught:  # beyond 100: not a percentage, no hint
        load_spec(spec)
    assert str(caught.value).endswith("is greater than or equal to the maximum of 1")
