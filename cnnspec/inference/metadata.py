"""What an exported model carries besides its graph, and reading it back: the class names,
the input's image size, channels and resize policy, and the normalization inside the graph,
in an ONNX file's metadata_props and a TorchScript file's extra file. Export writes it;
`cnnspec predict model.onnx` reads it, so a deployer needs only the one file."""
from __future__ import annotations

from pathlib import Path

import torch

from cnnspec.errors import CnnspecError, control_character, first_line
from cnnspec.models.checkpoint import MAX_IMAGE_SIZE
from cnnspec.version import cnnspec_version, shown_version


class ExportError(CnnspecError):
    """The export failed, does not match PyTorch, or an exported file cannot be read."""


METADATA_PREFIX = "cnnspec."        # ONNX metadata_props keys: cnnspec.classes, ...
TORCHSCRIPT_METADATA = "cnnspec.json"  # the TorchScript file's extra file


def metadata(model) -> dict[str, str]:
    """What a deployer needs besides the graph, as strings (JSON for lists): the class
    names in output order, the input's image size, channels and resize policy, and the
    normalization the graph already applies (pixels / 255, then (x - mean) / std)."""
    import json

    checkpoint = model.checkpoint
    return {
        "classes": json.dumps(list(model.classes)),
        "image_size": json.dumps(list(model.image_size)),
        "channels": str(model.channels),
        "resize": model.resize,
        "mean": json.dumps(list(checkpoint.get("mean", []))),
        "std": json.dumps(list(checkpoint.get("std", []))),
        "version": cnnspec_version(),  # named when another cnnspec cannot read this metadata
        "input": "images: float32 (N, C, H, W), pixels / 255 (normalization is inside the graph)",
        "output": "probabilities: float32 (N, classes), in the order of classes",
    }


MAX_ONNX_BYTES = (2 << 30) - 1  # protobuf's own limit on a message


def read_metadata(path) -> dict:
    """The metadata `export` wrote into an ONNX or TorchScript file, parsed:
    {"classes": [...], "image_size": [h, w], "channels": c, "resize": ..., "mean", "std"}.
    Raises ExportError naming the file when it has none."""
    import json

    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return onnx_settings(path, read_onnx(path)[1])
    check_regular_file(path)
    try:
        files = {TORCHSCRIPT_METADATA: ""}
        torch.jit.load(str(path), map_location="cpu", _extra_files=files)
        props = json.loads(files[TORCHSCRIPT_METADATA] or "{}")
    except Exception as error:  # zip errors: the file is not what it says
        first = first_line(error, "unreadable")
        raise ExportError(f"{path}: not a readable exported model ({first})") from None
    return parsed_settings(path, props if isinstance(props, dict) else {})


def check_regular_file(path: Path) -> None:
    from cnnspec.regular_files import not_a_regular_file

    kind = not_a_regular_file(path)
    if kind == "missing":
        raise ExportError(f"{path}: no such model file")
    if kind:
        raise ExportError(f"{path}: cannot read the model: it is {kind}, not a regular file")


def read_onnx(path) -> tuple[bytes, object]:
    """The bytes of the ONNX file at `path`, read once and bounded, and the ModelProto
    they parse to. Give onnxruntime these bytes, not the path: then it runs what was
    checked here. A tensor whose data lies in another file is refused: onnxruntime
    would open whatever path the file names (../../etc/passwd), outside the model's folder."""
    import onnx

    path = Path(path)
    check_regular_file(path)
    if path.stat().st_size > MAX_ONNX_BYTES:
        raise too_large(path)
    with open(path, "rb") as file:
        data = file.read(MAX_ONNX_BYTES + 1)  # bounded too where the size was not known ahead
    if len(data) > MAX_ONNX_BYTES:
        raise too_large(path)
    try:
        model = onnx.load_model_from_string(data)
    except Exception as error:  # noqa: BLE001 - protobuf's errors: the file is not what it says
        first = first_line(error, "unreadable")
        raise ExportError(f"{path}: not a readable exported model ({first[:160]})") from None
    outside = external_tensor(model)
    if outside is not None:
        raise ExportError(f"{path}: tensor {outside[:80]!r} keeps its data in another file; cnnspec export "
                          f"writes every weight into the .onnx file and reads no other")
    refused = refused_operator(model)
    if refused is not None:
        raise ExportError(f"{path}: the graph holds {refused}; cnnspec export never writes one, and it could run "
                          f"for ever or fill the memory on one image")
    return data, model


def too_large(path) -> ExportError:
    return ExportError(f"{path}: larger than {MAX_ONNX_BYTES:,} bytes, protobuf's limit for an ONNX model")


def external_tensor(model) -> str | None:
    """The name of the first tensor whose data lies in another file (initializers, node
    attributes, subgraphs at any depth, functions), or None."""
    graphs, nodes = [model.graph], [node for function in model.functions for node in function.node]
    while graphs or nodes:
        tensors = []
        if graphs:
            graph = graphs.pop()
            tensors += [*graph.initializer, *sparse_parts(graph.sparse_initializer)]
            nodes += graph.node
        else:
            for attribute in nodes.pop().attribute:
                tensors += [attribute.t, *attribute.tensors, *sparse_parts([attribute.sparse_tensor]),
                            *sparse_parts(attribute.sparse_tensors)]
                graphs += [*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs]
        for tensor in tensors:
            if tensor.data_location == tensor.EXTERNAL or len(tensor.external_data):
                return tensor.name or "(unnamed)"
    return None


def sparse_parts(sparse_tensors) -> list:
    return [part for sparse in sparse_tensors for part in (sparse.values, sparse.indices)]


# Operators that loop or branch, and operators that size their output from values
# computed at run time: cnnspec's exports of the shipped specs hold none of them
# (tests/test_predict_export_mistakes.py exports a representative set and checks).
LOOPING_OPERATORS = {"Loop", "Scan", "If", "SequenceMap"}
SIZING_OPERATORS = {"Expand", "Tile", "Range", "OneHot", "MaxUnpool", "Col2Im", "CenterCropPad", "Upsample"}
# The pad layer's export builds its padding with ConstantOfShape of a constant shape of
# one value per padded dimension; a larger constant shape is no export of ours.
MAX_CONSTANT_OF_SHAPE_ELEMENTS = 64


def refused_operator(model) -> str | None:
    """The first node onnxruntime must not be given, in words ("a node of type Loop, ..."), or None:
    one that loops, branches or carries a subgraph; one that sizes a tensor from values
    (Expand, Tile, Range, ...); a ConstantOfShape whose shape is not a small constant;
    an operator outside the standard set; or any model-local function."""
    if len(model.functions):
        return f"a local function ({model.functions[0].name[:40]!r})"
    constants = constant_tensors(model.graph)
    for node in model.graph.node:
        op = node.op_type[:40]
        if node.domain not in ("", "ai.onnx"):
            return f"a node of type {op} from the operator set {node.domain[:40]!r}, not a standard ONNX operator"
        if node.op_type in LOOPING_OPERATORS or any(a.HasField("g") or len(a.graphs) for a in node.attribute):
            return f"a node of type {op}, which loops or branches"
        if node.op_type in SIZING_OPERATORS:
            return f"a node of type {op}, which sizes a tensor from values computed at run time"
        if node.op_type == "ConstantOfShape" and not small_constant_shape(constants.get(node.input[0])):
            return (f"a ConstantOfShape node whose shape is not a constant of at most "
                    f"{MAX_CONSTANT_OF_SHAPE_ELEMENTS} elements")
    return None


def constant_tensors(graph) -> dict:
    """The graph's initializers and Constant nodes' tensors, by the name they go by."""
    found = {tensor.name: tensor for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                found[node.output[0]] = value
    return found


def small_constant_shape(tensor) -> bool:
    """Whether `tensor` is a 1-D int64 shape of a few sizes whose product is small."""
    import math

    from onnx import TensorProto, numpy_helper

    if tensor is None or tensor.data_type != TensorProto.INT64 or len(tensor.dims) != 1 or tensor.dims[0] > 8:
        return False
    sizes = [int(v) for v in numpy_helper.to_array(tensor)]
    return all(v >= 0 for v in sizes) and math.prod(sizes) <= MAX_CONSTANT_OF_SHAPE_ELEMENTS


def onnx_settings(path, model) -> dict:
    """The cnnspec metadata of a parsed ONNX model, checked against its graph's input."""
    props = {entry.key.removeprefix(METADATA_PREFIX): entry.value
             for entry in model.metadata_props if entry.key.startswith(METADATA_PREFIX)}
    settings = parsed_settings(path, props)
    problem = graph_shape_problem(model, settings)
    if problem:
        raise ExportError(f"{path}: its metadata does not match its graph ({problem}): export it again "
                          f"with cnnspec export")
    return settings


def parsed_settings(path, props: dict) -> dict:
    import json

    if "classes" not in props:
        raise ExportError(f"{path}: no cnnspec metadata (class names, image size); "
                          "export it again with cnnspec export")
    missing = [key for key in REQUIRED_KEYS if key not in props]
    if missing:
        raise ExportError(f"{path}: its cnnspec metadata has no {', '.join(missing)} ({exported_by(props)}; "
                          f"this is cnnspec {cnnspec_version()}); export it again "
                          f"from its checkpoint with this cnnspec (cnnspec export)")
    try:
        settings = {"classes": json.loads(props["classes"]), "image_size": json.loads(props["image_size"]),
                    "channels": int(props["channels"]), "resize": props["resize"],
                    "mean": json.loads(props.get("mean", "[]")), "std": json.loads(props.get("std", "[]"))}
    except RecursionError:
        raise ExportError(f"{path}: damaged cnnspec metadata (JSON nested deeper than Python's stack)") from None
    except (KeyError, ValueError, TypeError) as error:
        raise ExportError(f"{path}: damaged cnnspec metadata ({first_line(error)[:120]})") from None
    problem = _malformed(settings)
    if problem:
        raise ExportError(f"{path}: damaged cnnspec metadata ({problem})")
    return settings


REQUIRED_KEYS = ("classes", "image_size", "channels", "resize")  # mean and std are optional


def exported_by(props: dict) -> str:
    """Which cnnspec wrote the metadata, as far as it says."""
    found = shown_version(props.get("version"))
    return f"exported by cnnspec {found}" if found else "perhaps exported by another cnnspec version"


def _malformed(settings: dict) -> str | None:
    """What is wrong with parsed metadata, or None."""
    from cnnspec.data.images import RESIZE_POLICIES

    classes, size = settings["classes"], settings["image_size"]
    if not (isinstance(classes, list) and classes and all(isinstance(name, str) for name in classes)):
        return "classes: expected a list of class names"
    unprintable = next((name for name in classes if control_character(name)), None)
    if unprintable is not None:  # they are printed in predict's table and CSV
        return f"classes: {unprintable[:60]!r} holds a control character or line break"
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_IMAGE_SIZE for v in size)):
        return f"image_size: expected [height, width], each 1 to {MAX_IMAGE_SIZE}, not {json_text(size)}"
    if settings["channels"] not in (1, 3):
        return f"channels: expected 1 or 3, not {settings['channels']}"
    if settings["resize"] not in RESIZE_POLICIES:
        return f"resize: expected one of {', '.join(RESIZE_POLICIES)}, not {settings['resize'][:40]!r}"
    return None


def graph_shape_problem(model, settings: dict) -> str | None:
    """Where the graph's input `images` or output `probabilities` has a static size that
    the metadata contradicts (channels, height, width; the number of classes), in words,
    or None. A graph without them is named by predict, which checks the names."""
    expected = {"images": [settings["channels"], *settings["image_size"]],
                "probabilities": [len(settings["classes"])]}
    for value in [*model.graph.input, *model.graph.output]:
        if value.name not in expected:
            continue
        static = [dim.dim_value if dim.HasField("dim_value") else None for dim in value.type.tensor_type.shape.dim]
        wanted = expected[value.name]
        if len(static) != len(wanted) + 1 or any(got not in (None, want) for got, want in zip(static[1:], wanted)):
            shown = ["?" if got is None else got for got in static]
            return f"{value.name} {shown}; the metadata says {wanted} after the batch"
    return None


def json_text(value) -> str:
    import json

    return json.dumps(value)[:60]
