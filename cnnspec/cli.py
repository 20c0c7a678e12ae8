"""The `cnnspec` command.

    cnnspec validate specs/*.yaml            # ok: ... lines; errors one per line; exit 1 if any
    cnnspec summary specs/simcnn.yaml --input 3x32x32 --classes 10 --depth 1
    cnnspec validate --strict specs/*.yaml   # warnings (likely mistakes) fail too
    cnnspec layers                           # every layer type, its keys, defaults and meaning
    cnnspec predict models/model.pt photos/  # one row per image: path, class, probability
    cnnspec export models/model.pt --format onnx
    cnnspec import resnext50_32x4d -o specs/resnext50_32x4d.yaml   # torchvision's model as a spec

A mistake in a spec or an argument prints one line and exits non-zero; `--debug`
(or CNNSPEC_DEBUG=1) shows the traceback instead. `validate` and `layers` do not
import torch, so they answer at once.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

from cnnspec.errors import CnnspecError, UsageError, debug_enabled, exit_on_user_error
from cnnspec.paths import PREPARED

DEFAULT_CLASSES = 10
EXIT_STATUS = ("Exit status: 0 done, 1 failed (one error line on stderr), 2 bad arguments, "
               "130 Ctrl-C, 143 SIGTERM (nothing half-written is kept).")
SHAPE = re.compile(r"^(\d+)x(\d+)x(\d+)$")


def parse_shape(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    match = SHAPE.match(text.strip().lower())
    if not match or 0 in (shape := tuple(int(part) for part in match.groups())):
        raise UsageError(f"--input: expected CxHxW with sizes >= 1, like 3x32x32, not '{text}'")
    return shape


# `cnnspec import` builds torchvision's network with this many outputs before any spec
# exists to be bounded: 10**12 was a torch allocation traceback, 10**7 tens of gigabytes.
# ImageNet-21k, the largest label set torchvision's families are trained on, has 21,841.
MAX_IMPORT_CLASSES = 100_000


def check_classes(classes: int, most: int | None = None) -> int:
    if classes < 1 or (most is not None and classes > most):
        expected = f"1 to {most:,}" if most is not None else "a number >= 1"
        raise UsageError(f"--classes: expected {expected}, not {classes}")
    return classes


def check_shapes(spec, args) -> list:
    """Infer every shape; the warnings (likely mistakes in a working spec)."""
    from cnnspec.models.shapes import infer

    return infer(spec, parse_shape(args.input), check_classes(args.classes)).warnings


def report_warnings(warnings: list, path: str, strict: bool) -> bool:
    """Print each warning (an error under --strict); True when that fails the spec."""
    for warning in warnings:
        print(f"{'error' if strict else 'warning'}: {naming_the_file(warning, path)}", file=sys.stderr)
    return strict and bool(warnings)


def naming_the_file(error: CnnspecError, path: str) -> str:
    """The error's line, starting with the spec's path (a read error may lack it)."""
    text = str(error)
    return text if text.startswith(str(path)) else f"{path}: {text}"


def validate(args) -> int:
    from cnnspec.spec.reader import load_spec

    parse_shape(args.input)
    check_classes(args.classes)
    failed = False
    for path in args.specs:
        try:
            warnings = check_shapes(load_spec(path), args)
        except CnnspecError as error:
            if args.debug:
                raise
            print(f"error: {naming_the_file(error, path)}", file=sys.stderr)
            failed = True
            continue
        if report_warnings(warnings, path, args.strict):
            failed = True
        else:
            print(f"ok: {path}" + (f" ({len(warnings)} warning{'s' * (len(warnings) != 1)})" if warnings else ""))
    return 1 if failed else 0


def summary(args) -> int:
    from cnnspec.models.summary import summarize
    from cnnspec.spec.reader import load_spec

    if args.depth is not None and args.depth < 0:
        raise UsageError(f"--depth: expected a number >= 0, not {args.depth}")
    spec = load_spec(args.spec)
    result = summarize(spec, input_shape=parse_shape(args.input),
                       num_classes=check_classes(args.classes))
    if report_warnings(result.warnings, args.spec, args.strict):
        return 1
    print(result.table(depth=args.depth))
    return 0


# ---------------------------------------------------------------- cnnspec layers

def type_text(schema: dict) -> str:
    kinds = schema.get("type", "any")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if "enum" in schema:
        return " | ".join(str(choice) for choice in schema["enum"])
    if "x-hint" in schema:
        return schema["x-hint"]
    if schema.get("$ref", "").endswith("/layer_list"):
        return "layer list"
    bounds = [f"{word} {schema[key]}" for key, word in
              (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
              if key in schema]
    text = " or ".join(kinds)
    return f"{text} {', '.join(bounds)}" if bounds else text


def default_text(key: str, schema: dict, required: list) -> str:
    if key in required:
        return "required"
    if "x-default-from" in schema:
        return f"= {schema['x-default-from']}"
    if "default" in schema:
        return json.dumps(schema["default"])
    return "-"


def layer_help(layer_type: str) -> list[str]:
    from cnnspec.spec.reader import layer_options, layer_schemas

    schema = layer_schemas()[layer_type]
    shorthand = schema.get("x-shorthand")
    lines = [f"{layer_type}: {schema['description']}"]
    if shorthand:
        lines.append(f"    shorthand: - {layer_type}: VALUE  sets {shorthand}")
    required = schema.get("required", [])
    for key, option in layer_options(layer_type).items():
        lines.append(f"    {key:<16} {default_text(key, option, required):<12} "
                     f"{type_text(option)}: {option.get('description', '')}")
    arguments = schema.get("unevaluatedProperties")
    if isinstance(arguments, dict):
        lines.append(f"    {'ARG':<16} {'':<12} {arguments['description']}")
    return lines


def layers(args) -> int:
    from cnnspec.spec.reader import layer_schemas

    for layer_type in layer_schemas():
        print("\n".join(layer_help(layer_type)))
        print()
    return 0


# ---------------------------------------------------------------- arguments

def build_parser() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)  # read by errors.debug_enabled, anywhere on the line
    debug.add_argument("--debug", action="store_true", help="show tracebacks (or CNNSPEC_DEBUG=1)")
    plugin = argparse.ArgumentParser(add_help=False)
    plugin.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE (a dotted name or a .py path) first: it may register "
                             "layer types (repeatable)")
    shape = argparse.ArgumentParser(add_help=False)
    shape.add_argument("--input", metavar="CxHxW",
                       help="input shape (default: the spec's input, else 3x32x32)")
    shape.add_argument("--classes", type=int, default=DEFAULT_CLASSES,
                       help=f"number of classes (default {DEFAULT_CLASSES})")
    shape.add_argument("--strict", action="store_true",
                       help="treat warnings (likely mistakes in a valid spec) as errors")

    parser = argparse.ArgumentParser(
        prog="cnnspec", parents=[debug],
        description="Describe a CNN in YAML; check it, summarize it, use the model it trained.",
        epilog=f"Results go to stdout; notes, errors and progress to stderr. {EXIT_STATUS}")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("validate", parents=[debug, plugin, shape],
                                  help="check specs (schema and shapes)")
    command.add_argument("specs", nargs="+", metavar="SPEC")
    command.set_defaults(run=validate)
    command = commands.add_parser("summary", parents=[debug, plugin, shape],
                                  help="a Keras-style table of layers, shapes and params")
    command.add_argument("spec", metavar="SPEC")
    command.add_argument("--depth", type=int, default=None, metavar="N",
                         help="show nested rows down to depth N only (0: top-level layers)")
    command.set_defaults(run=summary)
    command = commands.add_parser("layers", parents=[debug, plugin],
                                  help="every layer type with its options")
    command.set_defaults(run=layers)
    add_predict_command(commands, [debug, plugin])
    add_export_command(commands, [debug, plugin])
    add_import_command(commands, [debug, plugin])
    command = commands.add_parser(
        "exps", parents=[debug], help="the DVC experiments in one table that fits the terminal",
        description="One row per experiment (dvc exp show --json): name, headline metrics "
                    "(metrics/eval.json) and the params.yaml values it set (-S), under its baseline.")
    command.add_argument("--width", type=int, default=None, metavar="N",
                         help="columns (default: the terminal's)")
    command.set_defaults(run=show_experiments)
    return parser


def with_plugins(run, names: list[str]):
    def loading_first(args):
        from cnnspec.spec.plugins import load_plugins

        load_plugins(names)
        return run(args)

    return exit_on_user_error(loading_first) if not debug_enabled() else loading_first


# ---------------------------------------------------------------- using a trained model
# The work is in inference.py and export.py; importing them (and torch) waits for the command.

def add_predict_command(commands, parents) -> None:
    command = commands.add_parser(
        "predict", parents=parents, help="classify image files with a trained checkpoint",
        description="Classify images (files, folders searched recursively, or globs) with a "
                    "checkpoint. Exit status: 0 every image classified; 1 some images could not "
                    "be read (their rows and stderr say why; the rest are classified); 2 bad "
                    "arguments or no images found; 1 for a file that is not a cnnspec checkpoint.")
    command.add_argument("checkpoint", metavar="CHECKPOINT",
                         help="a cnnspec checkpoint (models/model.pt), or a model exported to ONNX "
                              "(model.onnx, run by onnxruntime with the same preprocessing)")
    command.add_argument("paths", nargs="+", metavar="PATH", help="image file, folder or glob")
    command.add_argument("--top-k", type=int, default=1, metavar="K", help="classes per image (default 1)")
    command.add_argument("--format", choices=("csv", "json", "table"), default="csv",
                         help="output format (default csv)")
    command.add_argument("--output", metavar="FILE", help="write here (atomically) instead of stdout")
    command.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    command.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    command.add_argument("--tta", choices=("none", "flip", "flip_translate"), default="none",
                         help="test-time augmentation, as the evaluate stage's (default none)")
    command.add_argument("--engine", choices=("auto", "torch", "onnxruntime"), default="auto",
                         help="what runs a .pt checkpoint's network: onnxruntime on an in-memory ONNX "
                              "export, or torch; auto (the default) takes onnxruntime for 20,000 images "
                              "or more on the CPU without --tta when it is installed, else torch")
    command.set_defaults(run=predict_images)


def add_export_command(commands, parents) -> None:
    command = commands.add_parser(
        "export", parents=parents, help="export a checkpoint to ONNX or TorchScript",
        description="Export a checkpoint's inference graph (normalization and softmax included; "
                    "input float32 (N, C, H, W) in 0..1, dynamic N) and check it against PyTorch "
                    "on real test images.")
    command.add_argument("checkpoint", metavar="CHECKPOINT", help="a cnnspec checkpoint (models/model.pt)")
    command.add_argument("--format", choices=("onnx", "torchscript"), required=True)
    command.add_argument("--output", metavar="FILE",
                         help="default: the checkpoint's path with .onnx or .torchscript.pt")
    command.add_argument("--check-images", metavar="FOLDER", default=None,
                         help="prepared data whose test images the export is checked on "
                              f"(default {PREPARED}; without it, images are generated)")
    command.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    command.set_defaults(run=export_model)


def add_import_command(commands, parents) -> None:
    command = commands.add_parser(
        "import", parents=parents, help="write a torchvision classifier as a spec, checked equal",
        description="Write torchvision model MODEL as a readable spec (its block once, then a line "
                    "per stage or block), after checking that the spec is the same network: the same "
                    "parameter count and, with torchvision's weights copied in by structure, the same "
                    "logits in float64 at two input sizes. Nothing is written if the check fails.")
    command.add_argument("model", metavar="MODEL", help="a torchvision model name: resnet50, convnext_tiny, ...")
    command.add_argument("-o", "--output", metavar="FILE", help="write the spec here (atomically); default stdout")
    command.add_argument("--classes", type=int, default=DEFAULT_CLASSES,
                         help=f"classes of the networks compared, at most {MAX_IMPORT_CLASSES:,} "
                              f"(default {DEFAULT_CLASSES})")
    command.set_defaults(run=import_spec)


def import_spec(args) -> int:
    from cnnspec.atomic import check_destination, write_text
    from cnnspec.models.importer import import_model

    classes = check_classes(args.classes, MAX_IMPORT_CLASSES)
    if args.output:
        check_destination(args.output)  # before the minutes of building and checking, not after
    text, parity = import_model(args.model, classes)
    if args.output:
        write_text(args.output, text)
        print(f"wrote {args.output}: {parity.summary()}", file=sys.stderr)
    else:
        sys.stdout.write(text)
        print(f"checked: {parity.summary()}", file=sys.stderr)
    return 0


def predict_images(args) -> int:
    from cnnspec.inference.predict import run_command

    return run_command(args)


def export_model(args) -> int:
    from cnnspec.errors import terminate_like_interrupt
    from cnnspec.inference.export import run_command

    terminate_like_interrupt()  # SIGTERM like Ctrl-C: the half-written export is removed

    return run_command(args)


def show_experiments(args) -> int:
    from cnnspec.pipeline.experiments import run_command

    return run_command(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.debug = debug_enabled(sys.argv[1:] if argv is None else argv)
    run = args.run if args.debug else exit_on_user_error(args.run)
    if getattr(args, "plugin", None):
        run = with_plugins(run, args.plugin)
    try:
        return run(args)
    except BrokenPipeError:  # `cnnspec layers | head`: the reader left, nothing is wrong
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())
