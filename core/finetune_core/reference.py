"""The FineTuneJob field reference in Markdown, generated from the API models.

The README embeds it between two markers; a test fails when the two drift apart, so the
descriptions are written once, in api.py.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from finetune_core.api import FineTuneJobSpec

BEGIN = "<!-- BEGIN FIELD REFERENCE (generated: make reference) -->"
END = "<!-- END FIELD REFERENCE -->"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model inside `Model`, `Model | None` or `list[Model]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is Literal:
        return " \\| ".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return "map of string"
    if origin is typing.Annotated:
        return _type_name(args[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "object"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(
        annotation, str(annotation)
    )


def _default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined:
        return "required" if field.default_factory is None else ""
    if field.default is None:
        return ""
    value = field.default
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        path = f"{prefix}.{key}"
        nested = _model_of(field.annotation)
        is_list = typing.get_origin(field.annotation) is list or any(
            typing.get_origin(a) is list for a in typing.get_args(field.annotation)
        )
        description = (field.description or "").replace("|", "\\|")
        rows.append(
            f"| `{path}` | {_type_name(field.annotation)} | {_default(field)} | {description} |"
        )
        if nested is not None:
            rows += _rows(nested, f"{path}[]" if is_list else path)
    return rows


def field_reference() -> str:
    """A Markdown table of every spec field: path, type, default, description."""
    header = ["| Field | Type | Default | Description |", "|---|---|---|---|"]
    return "\n".join(header + _rows(FineTuneJobSpec, "spec")) + "\n"


def embed(document: str) -> str:
    """Replace the reference between the markers in a Markdown document."""
    head, begin, rest = document.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError("the document has no field reference markers")
    return f"{head}{BEGIN}\n{field_reference()}{END}{tail}"
