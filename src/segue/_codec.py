"""JSON payloads: arguments and results, encoded with msgspec and decoded to annotated types.

Datetimes, UUIDs, dataclasses and msgspec Structs are native to msgspec; pydantic models
go through their own JSON mode. Nothing is ever unpickled.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from segue._errors import PayloadError

if TYPE_CHECKING:
    from collections.abc import Callable

_ANY: Any = Any


def _enc_hook(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if isinstance(obj, set | frozenset):
        return list(obj)
    raise NotImplementedError(f"objects of type {type(obj).__name__} are not JSON-serialisable")


def _dec_hook(typ: type, obj: Any) -> Any:
    validate = getattr(typ, "model_validate", None)
    if callable(validate):
        return validate(obj)
    raise NotImplementedError(f"cannot decode {typ!r}")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
_plain = msgspec.json.Decoder()
_ARGS_TYPE = tuple[list[msgspec.Raw], dict[str, msgspec.Raw]]
_args_decoder = msgspec.json.Decoder(_ARGS_TYPE)


def encode(value: Any, *, what: str, limit: int, setting: str = "max_payload_bytes") -> bytes:
    """Encode a value to JSON, refusing what cannot be encoded or exceeds `limit` bytes
    (the value of Settings.<setting>, named in the error)."""
    try:
        data = _encoder.encode(value)
    except (TypeError, NotImplementedError, msgspec.EncodeError) as exc:
        raise PayloadError(f"{what} cannot be encoded as JSON: {exc}") from None
    if len(data) > limit:
        raise PayloadTooLarge(
            f"{what} is {len(data):,} bytes encoded, over the limit of {limit:,} bytes "
            f"(Settings.{setting}); pass a reference (a path, a URL, an id) instead"
        )
    return data


class PayloadTooLarge(PayloadError):
    """A payload that encodes but is over its size limit (internal: users see PayloadError)."""


def encode_args(args: tuple[Any, ...], kwargs: dict[str, Any], *, what: str, limit: int) -> bytes:
    return encode((args, kwargs), what=what, limit=limit)


def decode_plain(data: bytes) -> Any:
    return _plain.decode(data)


class TypedDecoder:
    """Decodes one JSON value to an annotated type (plain JSON when unannotated)."""

    __slots__ = ("_decoder",)

    def __init__(self, annotation: Any) -> None:
        if annotation is inspect.Parameter.empty or annotation is _ANY or annotation is None:
            self._decoder: msgspec.json.Decoder[Any] = _plain
        else:
            self._decoder = msgspec.json.Decoder(annotation, dec_hook=_dec_hook, strict=False)

    def decode(self, data: bytes | msgspec.Raw) -> Any:
        return self._decoder.decode(data)


class ArgsDecoder:
    """Decodes an argument payload `[args, kwargs]` to the parameters' annotated types."""

    def __init__(self, fn: Callable[..., Any], hints: dict[str, Any], skip_first: bool) -> None:
        params = list(inspect.signature(fn).parameters.values())
        if skip_first:
            params = params[1:]
        self._positional: list[TypedDecoder] = []
        self._var_positional: TypedDecoder | None = None
        self._named: dict[str, TypedDecoder] = {}
        self._var_keyword: TypedDecoder | None = None
        for p in params:
            dec = TypedDecoder(hints.get(p.name, inspect.Parameter.empty))
            if p.kind is p.VAR_POSITIONAL:
                self._var_positional = dec
            elif p.kind is p.VAR_KEYWORD:
                self._var_keyword = dec
            else:
                if p.kind is not p.KEYWORD_ONLY:
                    self._positional.append(dec)
                self._named[p.name] = dec

    def decode(self, data: bytes, first: bytes | None = None) -> tuple[list[Any], dict[str, Any]]:
        """`first`: a JSON value to pass before the stored arguments (a workflow step's
        input from the step before it), decoded for the first parameter."""
        raw_args, raw_kwargs = _args_decoder.decode(data)
        if first is not None:
            raw_args = [msgspec.Raw(first), *raw_args]
        args: list[Any] = []
        for i, raw in enumerate(raw_args):
            if i < len(self._positional):
                dec = self._positional[i]
            elif self._var_positional is not None:
                dec = self._var_positional
            else:
                dec = _PLAIN
            args.append(dec.decode(raw))
        kwargs = {
            k: self._named.get(k, self._var_keyword or _PLAIN).decode(raw)
            for k, raw in raw_kwargs.items()
        }
        return args, kwargs


_PLAIN = TypedDecoder(_ANY)


class TaskTypes(Protocol):
    """What decodes one task's records: its arguments' and its result's types (a Task)."""

    @property
    def args_decoder(self) -> ArgsDecoder: ...
    @property
    def result_decoder(self) -> TypedDecoder: ...
