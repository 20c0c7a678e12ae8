"""cnnspec/spec/schema.json, the spec language's JSON Schema that editors use (YAML language
servers, `# yaml-language-server: $schema=...`), written from the layer registry:

    python -m cnnspec.spec.schema_file --write    # after changing a layer type's schema
    python -m cnnspec.spec.schema_file --check    # exit 1 if the file is out of date

The reader never reads the file: it validates against the registry's assembled schema
(tests/test_registry.py checks that the checked-in file equals it).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cnnspec.layers  # noqa: F401 - registers the built-in layer types
from cnnspec.atomic import write_text
from cnnspec.layers.registry import spec_schema

SCHEMA_FILE = Path(__file__).with_name("schema.json")


def schema_text() -> str:
    return json.dumps(spec_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cnnspec.spec.schema_file", description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help=f"write {SCHEMA_FILE.name} from the registry")
    action.add_argument("--check", action="store_true", help="exit 1 if the file differs from the registry")
    args = parser.parse_args(argv)
    current = SCHEMA_FILE.read_text(encoding="utf-8") if SCHEMA_FILE.exists() else None
    if args.check:
        if current != schema_text():
            print(f"{SCHEMA_FILE}: out of date; run python -m cnnspec.spec.schema_file --write", file=sys.stderr)
            return 1
        return 0
    if current != schema_text():
        write_text(SCHEMA_FILE, schema_text())
        print(f"wrote {SCHEMA_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
