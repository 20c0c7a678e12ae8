"""cnnspec: describe an image-classification CNN in YAML, get a checked nn.Module.

    import cnnspec
    spec = cnnspec.load_spec("specs/simcnn.yaml")
    model = cnnspec.build_model(spec, input_shape=(3, 32, 32), num_classes=10)
    print(cnnspec.summarize(spec).table())

    model = cnnspec.load_model("models/model.pt")      # normalization and softmax inside
    rows = cnnspec.predict(model, ["cat.jpg"], top_k=3)

Attributes are imported on first use, so `cnnspec validate` never pays for
importing torch.
"""
from cnnspec.errors import CnnspecError, DataError, ParamsError, SpecError, TrainingError

__all__ = ["load_spec", "parse_spec", "build_model", "summarize", "register_layer", "LayerRule",
           "Inferred", "load_plugins", "load_weights", "load_model", "predict", "SpecError", "CnnspecError",
           "ParamsError", "DataError", "TrainingError"]

_LAZY = {
    "load_spec": "cnnspec.spec.reader",
    "parse_spec": "cnnspec.spec.reader",
    "build_model": "cnnspec.models.compiler",
    "summarize": "cnnspec.models.summary",
    "register_layer": "cnnspec.layers",   # a layer type from user code (docs/spec.md)
    "LayerRule": "cnnspec.layers",
    "Inferred": "cnnspec.layers",
    "load_plugins": "cnnspec.spec.plugins",
    "load_weights": "cnnspec.training.finetune",  # pretrained weights by structure (docs/finetune.md)
    "load_model": "cnnspec.inference.predict",
    "predict": "cnnspec.inference.predict",
}


def __dir__():  # tab completion lists the API that loads on first use
    return sorted(set(globals()) | set(_LAZY))


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cnnspec' has no attribute {name!r}")
