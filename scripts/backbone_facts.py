"""Write cnnspec/layers/backbone_facts.json: each torchvision backbone's output shape,
parameter count and MACs at the common input sizes, measured on the meta device.

    python scripts/backbone_facts.py

`cnnspec summary` reads these instead of importing torch and torchvision (several
seconds); tests/test_backbone_facts.py checks them against a fresh measurement.
Re-run after changing the torchvision pin.
"""
import json
import sys
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnspec.atomic import write_text  # noqa: E402
from cnnspec.layers.backbone import BACKBONE_FACTS, measure_backbone  # noqa: E402
from cnnspec.models.shapes import Context  # noqa: E402
from cnnspec.spec.nodes import LayerNode, Location  # noqa: E402
from cnnspec.spec.reader import layer_schemas  # noqa: E402

INPUT_SHAPES = [(3, 32, 32), (3, 224, 224)]


def backbone_node(model_name: str) -> LayerNode:
    return LayerNode("backbone", "backbone_1", {"model": model_name}, Location(None), "layers[0]")


def measure_all() -> dict:
    models = {}
    for model_name in layer_schemas()["backbone"]["properties"]["model"]["enum"]:
        for shape in INPUT_SHAPES:
            try:
                facts = measure_backbone(backbone_node(model_name), shape, Context())
            except Exception as failure:  # too small an input for this model: not stored
                print(f"skip {model_name} at {shape}: {str(failure).splitlines()[0]}", file=sys.stderr)
                continue
            models[f"{model_name}@{'x'.join(map(str, shape))}"] = facts
    return {"torchvision": version("torchvision"), "models": models}


if __name__ == "__main__":
    facts = measure_all()
    write_text(BACKBONE_FACTS, json.dumps(facts, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(facts['models'])} entries to {BACKBONE_FACTS}")
