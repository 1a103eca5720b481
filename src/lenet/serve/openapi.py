"""How /docs describes the digit reader (lenet.serve.http's read_digit): the bodies it takes and its answer.
The endpoints parse their bodies themselves, so FastAPI cannot infer these; they are declared here once."""

from __future__ import annotations

from typing import Any

from lenet.model import SHAPE

BINARY = {"type": "string", "format": "binary"}
ROW = {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}}
SIDE, MAP = f"{SHAPE.image}x{SHAPE.image}", f"{SHAPE.conv1_side}x{SHAPE.conv1_side}"  # "28x28", "24x24"
PIXELS_TEXT = f"{SHAPE.image} rows of {SHAPE.image} numbers in [0, 1]"
PIXELS = {"type": "array", "items": ROW, "description": f"{PIXELS_TEXT}, white digit on black"}
PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {"image": BINARY}}},
        "image/png": {"schema": BINARY},
        "application/json": {
            "schema": {"type": "object", "required": ["pixels"], "properties": {"pixels": PIXELS}}
        },
    },
}
NUMBERS = {"type": "array", "items": {"type": "number"}}
DIGIT = {"type": "integer", "minimum": 0, "maximum": SHAPE.classes - 1}
CALIBRATED = {"type": ["object", "null"], "properties": {
    "temperature": {"type": "number", "description": "the softmax temperature fitted on validation images"},
    "confidence": {"type": "number", "description": "the label's calibrated probability"},
    "probabilities": {**NUMBERS, "description": "all calibrated probabilities, one per class (6 places)"},
}, "description": "the probabilities calibrated on the model's validation images; null when not known "
                  "(a live run, or the data set is not on this machine)"}  # fmt: skip
PREDICT_ANSWER = {"type": "object", "properties": {
    "label": {**DIGIT, "description": "the most likely digit"},
    "confidence": {"type": "number", "description": "its probability (the network's softmax)"},
    "runner_up": {"type": "object", "properties": {"label": DIGIT, "probability": {"type": "number"}},
                  "description": "the second most likely digit and its probability"},
    "calibrated": CALIBRATED,
    "probabilities": {**NUMBERS, "description": f"{SHAPE.classes} probabilities, one per class (6 places)"},
    "input": {"type": "array", "items": NUMBERS,
              "description": f"the {SIDE} image the network saw (3 places)"},
    "conv1": {"type": "array", "items": {"type": "array", "items": NUMBERS},
              "description": f"conv1's {SHAPE.conv1} {MAP} feature maps after ReLU (3 places)"},
}}  # fmt: skip
PREDICT_TEXT = (f"Answers `label`, `confidence`, the `runner_up`, {SHAPE.classes} `probabilities`, the "
                "confidence calibrated on the validation split where it is known (`calibrated`), the "
                f"{SIDE} `input` the network saw, and conv1's {SHAPE.conv1} {MAP} feature maps (`conv1`). "
                "Images are centred and scaled like MNIST first.")  # fmt: skip
PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the reading", "content": {"application/json": {"schema": PREDICT_ANSWER}}},
    400: {"description": "not a usable image or pixel array"},
    413: {"description": "body over 1 MB"}, 415: {"description": "unsupported content type"},
    422: {"description": f"JSON without a {SIDE} `pixels` array"},
}  # fmt: skip


def predict_docs(more: dict[int, str] | None = None) -> dict[str, Any]:
    """The route keywords that document a digit-reading endpoint; `more` adds its own statuses."""
    own = {status: {"description": text} for status, text in (more or {}).items()}
    return {"openapi_extra": {"requestBody": PREDICT_BODY}, "description": PREDICT_TEXT,
            "responses": PREDICT_RESPONSES | own}  # fmt: skip
