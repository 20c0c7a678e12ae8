"""A loaded model's ONNX graph as bytes: what `cnnspec export --format onnx` writes to its
file and what `cnnspec predict` runs in an onnxruntime session without writing anything.
Its own module so that export (which loads checkpoints through predict) and predict
both use it without importing each other."""
from __future__ import annotations

import warnings

import torch

from cnnspec.inference.metadata import METADATA_PREFIX, ExportError, metadata

TOLERANCE = 1e-4  # largest |exported - PyTorch| probability accepted


def onnx_bytes(model, example: torch.Tensor, opset: int = 17, with_metadata: bool = True) -> bytes:
    """`model` (an InferenceModel) as an ONNX model in memory: input `images`, output
    `probabilities`, batch dimension dynamic, traced on `example`; with cnnspec's metadata
    (class names, image settings) unless `with_metadata` is False. `cnnspec export` writes
    these bytes to its file; `cnnspec predict` runs them in an onnxruntime session."""
    import io

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["probabilities"],
                          dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}})
    if not with_metadata:
        return buffer.getvalue()
    try:
        import onnx
    except ImportError:
        raise ExportError("writing the ONNX model's metadata needs onnx: pip install 'cnnspec[export]'") from None
    graph = onnx.load_from_string(buffer.getvalue())
    for key, value in metadata(model).items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, value
    return graph.SerializeToString()
