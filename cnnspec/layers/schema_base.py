"""The parts of the spec language's JSON Schema that are not a layer type: the top level
(name, input, defaults, blocks, layers, ...), the shapes of layers and layer lists, the
options every layer takes (layer_options) and every weighted one (weighted_options), the
activation names, and the spec's own words `repeat` and `use`. registry.spec_schema()
adds one $defs entry per registered layer type.
"""

MAX_PIXELS = 4096  # the largest size, stride or padding a spec may write
# The largest magnitude of a constant a layer multiplies by (scale, layer_scale, an
# activation's slope or alpha): far beyond any real network, and torch turns each into a
# float32, which a spec's 1e300 would overflow.
MAX_FACTOR = 1e6


def pixel_sizes(description: str, minimum: int = 1, count: int = 2, nullable: bool = False, **more) -> dict:
    """The schema of a size written as one integer or a list of `count` (kernel, stride,
    dilation: [h, w]; padding: [top, bottom, left, right]); `more` adds default and the like."""
    return {"type": ["integer", "array"] + (["null"] if nullable else []),
            "minimum": minimum, "maximum": MAX_PIXELS,
            "items": {"type": "integer", "minimum": minimum, "maximum": MAX_PIXELS},
            "minItems": count, "maxItems": count, "description": description, **more}


TOP_LEVEL = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://cnnspec.invalid/schema/spec.json",
    "title": "cnnspec spec",
    "description": "An image-classification CNN described as a list of layers (see docs/spec.md).",
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "layers"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "description": "the model's name"},
        "description": {"type": "string", "description": "free text"},
        "recipe": {
            "type": "string",
            "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
            "description": "the training recipe (recipes/NAME.yaml) this network is meant for; params.yaml's `recipe: auto` uses it",
        },
        "input": {
            "type": "object",
            "additionalProperties": False,
            "required": ["channels", "height", "width"],
            "description": "the input image shape (by default taken from the dataset)",
            "properties": {
                "channels": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "image channels",
                    "maximum": 4096,
                },
                "height": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "image height",
                    "maximum": 8192,
                },
                "width": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "image width",
                    "maximum": 8192,
                },
            },
        },
        "defaults": {
            "type": "object",
            "description": "per layer type: options every layer of that type gets unless it sets them",
            "propertyNames": {"enum": []},
            "additionalProperties": {"type": "object"},
        },
        "blocks": {
            "type": "object",
            "description": "named reusable layer lists with arguments",
            "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
            "additionalProperties": {"$ref": "#/$defs/block"},
        },
        "layers": {"$ref": "#/$defs/layer_list", "description": "the model, first layer first"},
    },
}

SHARED_DEFS = {
    "layer": {
        "type": ["string", "object"],
        "minProperties": 1,
        "maxProperties": 1,
        "description": "TYPE, TYPE: {options}, or TYPE: value for a type's shorthand option",
    },
    "layer_list": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/layer"}},
    "branch": {
        "type": "array",
        "items": {"$ref": "#/$defs/layer"},
        "description": "a layer list; an empty list [] passes the input through unchanged",
    },
    "layer_options": {
        "description": "options every layer type accepts",
        "properties": {
            "name": {
                "type": "string",
                "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
                "x-hint": "a name of letters, digits and underscores",
                "description": "unique layer name (default: TYPE_N, e.g. conv_3); used in the summary and state_dict keys",
            },
            "trainable": {
                "type": "boolean",
                "default": True,
                "description": "false freezes every parameter of the layer and of its children",
            },
        },
    },
    "weighted_options": {
        "description": "options of the layer types that own weights (LayerRule.weighted)",
        "properties": {
            "l2": {
                "type": "number",
                "minimum": 0,
                "description": "L2 penalty l2 * sum(weight**2) added to the loss for this layer's kernel (Keras kernel_regularizer)",
                "default": 0,
            },
            "lr_mult": {
                "type": "number",
                "minimum": 0,
                "description": "this layer's parameters train with lr * lr_mult",
                "default": 1,
            },
            "wd_mult": {
                "type": "number",
                "minimum": 0,
                "description": "this layer's parameters use weight_decay * wd_mult",
                "default": 1,
            },
        },
    },
    "activation_name": {
        "type": "string",
        "enum": [
            "identity",
            "relu",
            "relu6",
            "gelu",
            "elu",
            "celu",
            "silu",
            "mish",
            "hardswish",
            "hardsigmoid",
            "leaky_relu",
            "tanh",
            "sigmoid",
            "softmax",
        ],
        "description": "an element-wise activation function (cnnspec.layers.activations.ACTIVATIONS)",
    },
    "block": {
        "type": "object",
        "additionalProperties": False,
        "required": ["layers"],
        "properties": {
            "description": {"type": "string", "description": "free text"},
            "args": {
                "type": "object",
                "description": "argument name -> default value (null = required); $in_channels, the channels entering the block, is always there",
                "propertyNames": {
                    "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
                    "not": {"enum": ["block", "name", "trainable", "in_channels", "when"]},
                },
            },
            "layers": {
                "$ref": "#/$defs/layer_list",
                "description": "the block's layers; $arg refers to an argument",
            },
        },
    },
    "repeat": {
        "x-layer": True,
        "description": "n copies of a layer list, inline",
        "x-example": [{"repeat": {"n": 2, "layers": [{"conv": 4}]}}],
        "type": "object",
        "additionalProperties": False,
        "required": ["n", "layers"],
        "properties": {
            "n": {
                "type": "integer",
                "minimum": 1,
                "description": "how many copies",
                "maximum": 1000,
            },
            "layers": {"$ref": "#/$defs/layer_list", "description": "the layers to repeat"},
        },
    },
    "use": {
        "x-layer": True,
        "description": "inserts a block from `blocks` with its arguments as further keys",
        "type": "object",
        "allOf": [{"$ref": "#/$defs/layer_options"}],
        "required": ["block"],
        "x-shorthand": "block",
        "properties": {"block": {"type": "string", "description": "a name under `blocks`"}},
        "unevaluatedProperties": {"description": "an argument of the block"},
    },
}
