"""Response bodies, each defined once: the definition builds the body and is its OpenAPI schema.

Two kinds, by what the body is built from:

- A DRF serializer where the answer renders objects (a key, a provider, the usage summary, a
  token pair): the view answers `XSerializer(obj).data`, and `extend_schema(responses=...)` names
  the same class.
- A TypedDict shape where the answer is assembled on the data plane (vectors, jobs): the view
  answers the plain dict that the shape's builder function returns, typed by the shape, because a
  serializer's per-field, per-item work would cost many times what building the dict does.
  `shape_serializer(shape)` derives the serializer the schema shows from the shape's annotations.

tests/test_response_schemas.py calls every endpoint and checks each real answer against the
published schema with no field more or less, so a body that drifts from its definition fails there.
"""

from __future__ import annotations

import types
from datetime import date, datetime
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers

_SCALAR_FIELDS: dict[Any, type[serializers.Field]] = {
    bool: serializers.BooleanField,
    int: serializers.IntegerField,
    float: serializers.FloatField,
    str: serializers.CharField,
    datetime: serializers.DateTimeField,
    date: serializers.DateField,
}
_shape_serializers: dict[type, type[serializers.Serializer]] = {}


class IsoDateTimeField(serializers.DateTimeField):
    """A time as `datetime.isoformat()` writes it (`+00:00`): how the job payload, its webhook,
    a revoked key and the quota reset have always shown times (DRF's own format writes `Z`)."""

    def to_representation(self, value: datetime | None) -> str | None:  # type: ignore[override]  # None -> null
        return value.isoformat() if value else None


def shape_serializer(shape: type) -> type[serializers.Serializer]:
    """The serializer of a TypedDict shape, for the schema: component `<shape's name>`, described
    by its docstring, one field per key.

    Annotations map as: bool/int/float/str/datetime/date -> the DRF field; `X | None` -> nullable;
    `list[X]`, `dict[str, X]`, a nested shape -> list, dict, nested component (one class per
    shape, so a shape used twice is one component); `Literal["list"]` -> a string with that
    default (the constants `object` carries, as OpenAI documents them); several literals -> a
    choice. `Annotated[X, "help"]` adds a description; `Annotated[X, SomeField]` (a field class,
    or a configured field to copy) says what no annotation can: a vector that is floats or
    base64, a time written as an ISO string, a choice of a model's statuses.
    """
    serializer = _shape_serializers.get(shape)
    if serializer is None:
        fields = {name: _field(hint) for name, hint in get_type_hints(shape, include_extras=True).items()}
        attrs = {**fields, "__doc__": shape.__doc__, "__module__": shape.__module__}
        serializer = type(f"{shape.__name__}Serializer", (serializers.Serializer,), attrs)
        serializer = extend_schema_serializer(component_name=shape.__name__)(serializer)
        _shape_serializers[shape] = serializer
    return serializer


def _field(hint: Any, **kwargs: Any) -> serializers.Field:
    if _is_optional(hint):
        (inner,) = (a for a in get_args(hint) if a is not type(None))
        return _field(inner, **{**kwargs, "allow_null": True})
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        base, *meta = args
        for item in meta:
            if isinstance(item, str):
                kwargs["help_text"] = item
        for item in meta:
            if isinstance(item, serializers.Field):  # a configured field (choices...): a new one like it
                # _kwargs: the arguments Field.__new__ keeps (not in the stubs).
                item, kwargs = type(item), {**item._kwargs, **kwargs}  # type: ignore[attr-defined]
            if isinstance(item, type) and issubclass(item, serializers.Field):
                extra: dict[str, Any] = {"allow_null": True} if _is_optional(base) else {}
                return item(**kwargs, **extra)
        return _field(base, **kwargs)
    if origin is Literal:
        if len(args) == 1:
            return serializers.CharField(default=args[0], **kwargs)
        return serializers.ChoiceField(choices=list(args), **kwargs)
    if origin is list:
        (item,) = args
        if is_typeddict(item):
            return shape_serializer(item)(many=True, **kwargs)
        return serializers.ListField(child=_field(item), **kwargs)
    if origin is dict:
        return serializers.DictField(child=_field(args[1]), **kwargs)
    if is_typeddict(hint):
        return shape_serializer(hint)(**kwargs)
    if hint in _SCALAR_FIELDS:
        return _SCALAR_FIELDS[hint](**kwargs)
    raise TypeError(f"no serializer field for {hint!r}: annotate it as Annotated[..., SomeField]")


def _is_optional(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)
