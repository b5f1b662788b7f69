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


def encode_args(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    what: str,
    limit: int,
    setting: str = "max_payload_bytes",
) -> bytes:
    return encode((args, kwargs), what=what, limit=limit, setting=setting)


def decode_plain(data: bytes) -> Any:
    return _plain.decode(data)


class TypedDecoder:
    """Decodes one JSON value to an annotated type (plain JSON when unannotated)."""

    __slots__ = ("_decoder", "typed")

    def __init__(self, annotation: Any) -> None:
        # plain: any JSON decodes, so there is nothing to check before a worker decodes it
        self.typed = not (
            annotation is inspect.Parameter.empty or annotation is _ANY or annotation is None
        )
        if not self.typed:
            self._decoder: msgspec.json.Decoder[Any] = _plain
        else:
            self._decoder = msgspec.json.Decoder(annotation, dec_hook=_dec_hook, strict=False)

    def decode(self, data: bytes | msgspec.Raw) -> Any:
        return self._decoder.decode(data)


class ArgsDecoder:
    """Decodes an argument payload `[args, kwargs]` to the parameters' annotated types.

    The worker decodes with it before a run, and an enqueue checks with it before writing:
    what a worker would refuse is refused at enqueue, naming the parameter."""

    def __init__(self, fn: Callable[..., Any], hints: dict[str, Any], skip_first: bool) -> None:
        params = list(inspect.signature(fn).parameters.values())
        if skip_first:
            params = params[1:]
        self._positional: list[tuple[str, TypedDecoder]] = []
        self._var_positional: tuple[str, TypedDecoder] | None = None
        self._named: dict[str, TypedDecoder] = {}
        self._var_keyword: TypedDecoder | None = None
        self._whole: msgspec.json.Decoder[Any] | None = None
        for p in params:
            dec = TypedDecoder(hints.get(p.name, inspect.Parameter.empty))
            if p.kind is p.VAR_POSITIONAL:
                self._var_positional = (p.name, dec)
            elif p.kind is p.VAR_KEYWORD:
                self._var_keyword = dec
            else:
                if p.kind is not p.KEYWORD_ONLY:
                    self._positional.append((p.name, dec))
                self._named[p.name] = dec
        decoders = list(self._named.values())
        if self._var_positional is not None:
            decoders.append(self._var_positional[1])
        if self._var_keyword is not None:
            decoders.append(self._var_keyword)
        # an enqueue checks only a task with a typed parameter: plain JSON always decodes
        self.typed = any(d.typed for d in decoders)
        if self.typed and self._var_positional is None and self._var_keyword is None:
            self._whole = _whole_decoder(params, hints)

    def decode(
        self, data: bytes, first: bytes | None = None, *, start: int = 0
    ) -> tuple[list[Any], dict[str, Any]]:
        """`first`: a JSON value to pass before the stored arguments (a workflow step's
        input from the step before it), decoded for the first parameter. `start`: the
        parameter the stored arguments begin at. Raises PayloadError naming the parameter
        whose value does not decode."""
        raw_args, raw_kwargs = _args_decoder.decode(data)
        if first is not None:
            raw_args = [msgspec.Raw(first), *raw_args]
        # hot (once per run): the parameter's name is built only for an error's message
        args: list[Any] = []
        n = len(self._positional)
        for i, raw in enumerate(raw_args, start):
            if i < n:
                dec = self._positional[i][1]
            elif self._var_positional is not None:
                dec = self._var_positional[1]
            else:
                dec = _PLAIN
            try:
                args.append(dec._decoder.decode(raw))
            except Exception as exc:  # msgspec's, or a pydantic model's own validation
                raise PayloadError(f"parameter {self._name(i)!r}: {exc}") from None
        kwargs = {
            k: _decode_one(self._named.get(k, self._var_keyword or _PLAIN), raw, k)
            for k, raw in raw_kwargs.items()
        }
        return args, kwargs

    def check(self, data: bytes, *, first_to_come: bool = False) -> None:
        """Refuse arguments a worker would not decode (PayloadError naming the parameter).
        `first_to_come`: the stored arguments start at the second parameter (a chain step,
        whose first comes from the step before it)."""
        if not self.typed:
            return
        if self._whole is not None and not first_to_come:
            try:
                self._whole.decode(data)
                return
            except Exception:
                pass  # the parameter by parameter decoding below names the parameter
        self.decode(data, start=1 if first_to_come else 0)

    def _name(self, i: int) -> str:
        """How an error names positional argument `i`."""
        n = len(self._positional)
        if i < n:
            return self._positional[i][0]
        if self._var_positional is not None:
            return f"{self._var_positional[0]}[{i - n}]"
        return f"#{i + 1}"


def _whole_decoder(
    params: list[inspect.Parameter], hints: dict[str, Any]
) -> msgspec.json.Decoder[Any] | None:
    """One decoder of a whole payload `[args, kwargs]`, each value to its parameter's type
    as its TypedDecoder decodes it: the check of an enqueue in one call to msgspec, an eighth
    of the cost of decoding parameter by parameter (it builds nothing the check keeps).
    None when msgspec cannot express the parameters as struct fields."""

    def field(p: inspect.Parameter) -> tuple[str, Any, Any]:
        annotation = hints.get(p.name, inspect.Parameter.empty)
        typed = not (annotation is inspect.Parameter.empty or annotation is None)
        return (p.name, annotation if typed else _ANY, msgspec.UNSET)

    positional = [field(p) for p in params if p.kind is not p.KEYWORD_ONLY]
    try:
        # missing values are the binding check's concern (defaults): every field may be left out
        args = msgspec.defstruct("Args", positional, array_like=True, gc=False)
        kwargs = msgspec.defstruct("Kwargs", [field(p) for p in params], gc=False)
        return msgspec.json.Decoder(tuple[args, kwargs], dec_hook=_dec_hook, strict=False)  # type: ignore[valid-type]
    except Exception:
        return None


def _decode_one(dec: TypedDecoder, raw: msgspec.Raw, name: str) -> Any:
    try:
        return dec.decode(raw)
    except Exception as exc:  # msgspec's, or a pydantic model's own validation
        raise PayloadError(f"parameter {name!r}: {exc}") from None


_PLAIN = TypedDecoder(_ANY)


class TaskTypes(Protocol):
    """What decodes one task's records: its arguments' and its result's types (a Task)."""

    @property
    def args_decoder(self) -> ArgsDecoder: ...
    @property
    def result_decoder(self) -> TypedDecoder: ...
