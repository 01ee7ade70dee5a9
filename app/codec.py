"""The one JSON codec (orjson) of the domain records in app/models.py.

Every place that serialises a record goes through here: the hot store (app/cache), live events
(app/events.py), export/import lines (app/services/transfer.py), arq action results
(app/services/actions.py) and CRM webhooks (app/services/crm.py). No field is listed here by
hand: each encoder and decoder is generated once, at import, from the record's dataclass fields
(written out as plain Python so it costs what a hand-written one would on the hot paths). Adding
an optional field to `Message` therefore reaches every encoding without touching this module.

Two forms:
- *public*: snake_case objects with lowercase enums, ISO-8601 times and string ids, the form
  docs/jobs.md documents for results, export lines and webhooks (a view may leave fields out);
- *hot*: what Redis holds and pub/sub carries. Each entry carries `STAMP`, the format version:
  the codec's own `FORMAT` plus a digest of every record's field names and types. Any change of a
  record changes the stamp, so during a rolling deploy each side reads the other's entries as
  unknown: `UnknownFormat`, which the cache treats as a miss and the event hub as a gap (re-read
  Postgres). Nothing half-understood is ever served.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import uuid
import zlib
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

import orjson

from app import models
from app.models import Conversation, DomainEvent, Message, Source, StateEntry

#: Bump when the layout of the hot form itself changes (not for record fields: they are in the digest).
FORMAT = 1

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class UnknownFormat(ValueError):
    """An entry written by another version of the records (or of this codec)."""


# --------------------------------------------------------------------------------------------------
# Field kinds, read from the dataclasses' type hints
# --------------------------------------------------------------------------------------------------


def _kind(hint: Any) -> tuple[str, Any]:
    """('uuid' | 'datetime' | 'enum' | 'sources' | 'plain', extra), and whether None is allowed
    is handled by the generated code testing for None where the hint is optional."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if len(args) == 1:
            return _kind(args[0])
        return ("plain", None)
    if hint is uuid.UUID:
        return ("uuid", None)
    if hint is datetime:
        return ("datetime", None)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return ("enum", hint)
    if typing.get_origin(hint) is list and typing.get_args(hint) == (Source,):
        return ("sources", None)
    return ("plain", None)


def _optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    kind: str
    extra: Any
    optional: bool
    has_default: bool
    default: Any


def _fields(cls: type) -> list[_Field]:
    hints = typing.get_type_hints(cls, vars(models))
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        kind, extra = _kind(hint)
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else None
        out.append(_Field(f.name, kind, extra, _optional(hint), has_default, default))
    return out


def extra_fields(record: type, known: Collection[str]) -> dict[str, tuple[Any, dataclasses.Field[Any]]]:
    """The fields of `record` a piece of code does not handle by name: name → (type hint, field).

    Code that copies a record's fields one by one (an input model, a validator, a SQL statement)
    names the fields it treats specially and passes the rest through generically, so a new
    optional field of the record reaches it without an edit."""
    hints = typing.get_type_hints(record, vars(models))
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(record) if f.name not in known}


def _compile(name: str, source: str, env: dict[str, Any]) -> Callable[..., Any]:
    namespace = dict(env)
    exec(compile(source, f"<app.codec {name}>", "exec"), namespace)
    fn: Callable[..., Any] = namespace[name]
    return fn


def _none_guard(f: _Field, expr: str, value: str) -> str:
    return f"(None if {value} is None else {expr})" if f.optional else expr


def _to_public(f: _Field, value: str, empty_sources: bool) -> str:
    if f.kind == "uuid":
        return _none_guard(f, f"str({value})", value)
    if f.kind == "datetime":
        return _none_guard(f, f"{value}.isoformat()", value)
    if f.kind == "enum":
        return _none_guard(f, f"{value}.value", value)
    if f.kind == "sources":
        empty = "[]" if empty_sources else "None"
        return f"({empty} if {value} is None else [_source_public(s) for s in {value}])"
    return value


def _from_json(f: _Field, value: str) -> str:
    if f.kind == "uuid":
        return _none_guard(f, f"_UUID({value})", value)
    if f.kind == "datetime":
        return _none_guard(f, f"_dt({value})", value)
    if f.kind == "enum":
        return _none_guard(f, f"_enum_{f.name}({value})", value)
    if f.kind == "sources":
        return f"(None if {value} is None else [_source_from(s) for s in {value}])"
    return value


def _env(fields: Sequence[_Field]) -> dict[str, Any]:
    env: dict[str, Any] = {"_UUID": uuid.UUID, "_dt": datetime.fromisoformat}
    for f in fields:
        if f.kind == "enum":
            # A dict lookup: calling the enum class costs ten times more on the hot decode path.
            env[f"_enum_{f.name}"] = {m.value: m for m in f.extra}.__getitem__
    return env


# --------------------------------------------------------------------------------------------------
# The codec for one set of record classes (tests build one with a record that has one more field)
# --------------------------------------------------------------------------------------------------


def _default(value: Any) -> Any:
    if isinstance(value, uuid.UUID):  # asyncpg's UUID subclass: orjson takes exact types only
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_default)


def _micros(at: datetime) -> int:
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class Codec:
    def __init__(
        self,
        message: type[Message] = Message,
        conversation: type[Conversation] = Conversation,
        state: type[StateEntry] = StateEntry,
        source: type[Source] = Source,
    ) -> None:
        self.message_cls, self.conversation_cls, self.state_cls, self.source_cls = message, conversation, state, source
        mf, cf, sf, rf = _fields(message), _fields(conversation), _fields(state), _fields(source)
        schema = ";".join(
            f"{cls.__name__}:" + ",".join(f"{f.name}/{f.kind}/{int(f.optional)}" for f in fs)
            for cls, fs in ((message, mf), (conversation, cf), (state, sf), (source, rf))
        )
        #: The format version every hot entry and event carries (no ':' in it: state entries use ':').
        self.stamp = f"{FORMAT}.{zlib.crc32(schema.encode()):08x}"
        self._stamp_json = orjson.dumps(self.stamp)
        self._stamp_bytes = self.stamp.encode()

        # Sources: public objects, hot arrays.
        rnames = [f.name for f in rf]
        self._source_public: Callable[[Source], dict[str, Any]] = _compile(
            "f", "def f(s):\n    return {" + ", ".join(f"{n!r}: s.{n}" for n in rnames) + "}\n", {}
        )
        self._source_from: Callable[[dict[str, Any]], Source] = _compile(
            "f",
            "def f(d):\n    return _S("
            + ", ".join(f"d[{f.name!r}]" if not f.has_default else f"d.get({f.name!r})" for f in rf)
            + ")\n",
            {"_S": source},
        )
        source_hot = "[" + ", ".join(f"s.{n}" for n in rnames) + "]"

        # Messages: the hot array leaves out tenant_id and conversation_id (the key holds them).
        hot = [f for f in mf if f.name not in ("tenant_id", "conversation_id")]
        env = _env(mf) | {"_M": message, "_S": source, "_STAMP": self.stamp, "_Unknown": UnknownFormat}
        self._message_hot_list: Callable[[Message], list[Any]] = _compile(
            "f",
            "def f(m):\n    return [_STAMP, "
            + ", ".join(
                f"None if m.{f.name} is None else [{source_hot} for s in m.{f.name}]"
                if f.kind == "sources"
                else f"m.{f.name}"
                for f in hot
            )
            + "]\n",
            env,
        )
        args = []
        for f in mf:
            if f.name == "tenant_id":
                args.append("t")
            elif f.name == "conversation_id":
                args.append("c")
            else:
                i = 1 + hot.index(f)
                if f.kind == "sources":
                    args.append(f"(None if a[{i}] is None else [_S(*s) for s in a[{i}]])")
                else:
                    args.append(_from_json(f, f"a[{i}]"))
        self._message_from_hot: Callable[[str, uuid.UUID, list[Any]], Message] = _compile(
            "f",
            f"def f(t, c, a):\n    if a[0] != _STAMP or len(a) != {len(hot) + 1}:\n"
            "        raise _Unknown(f'hot message format {a[0]!r}')\n"
            "    return _M(" + ", ".join(args) + ")\n",
            env,
        )

        # Public objects and objects back (events and other JSON carry the public form's values).
        dict_env = env | {
            "_source_public": self._source_public,
            "_source_from": self._source_from,
            "_C": conversation,
            "_E": state,
        }
        self._view_cache: dict[tuple[str, frozenset[str], bool], Callable[[Any], dict[str, Any]]] = {}
        self._fields = {"message": mf, "conversation": cf, "state": sf}
        self._dict_env = dict_env | _env(cf) | _env(sf)
        self._message_from: Callable[[dict[str, Any]], Message] = self._from_dict("_M", mf, dict_env | _env(mf))
        self._conversation_from: Callable[[dict[str, Any]], Conversation] = self._from_dict(
            "_C", cf, dict_env | _env(cf)
        )
        self._state_from: Callable[[dict[str, Any]], StateEntry] = self._from_dict("_E", sf, dict_env | _env(sf))

    @staticmethod
    def _from_dict(cls_name: str, fields: list[_Field], env: dict[str, Any]) -> Callable[[dict[str, Any]], Any]:
        # A field with a default may be absent (a line exported before the field existed).
        parts = [
            f"{f.name}=" + _from_json(f, f"d.get({f.name!r}, {f.default!r})" if f.has_default else f"d[{f.name!r}]")
            for f in fields
        ]
        return _compile("f", f"def f(d):\n    return {cls_name}(" + ", ".join(parts) + ")\n", env)

    def _view(self, record: str, exclude: frozenset[str], empty_sources: bool) -> Callable[[Any], dict[str, Any]]:
        key = (record, exclude, empty_sources)
        fn = self._view_cache.get(key)
        if fn is None:
            items = [
                f"{f.name!r}: " + _to_public(f, f"r.{f.name}", empty_sources)
                for f in self._fields[record]
                if f.name not in exclude
            ]
            fn = _compile("f", "def f(r):\n    return {" + ", ".join(items) + "}\n", self._dict_env)
            self._view_cache[key] = fn
        return fn

    # public form ---------------------------------------------------------------------------------

    def message_public(self, m: Message, exclude: frozenset[str] = frozenset({"tenant_id"})) -> dict[str, Any]:
        """docs/jobs.md's message object: every field but those excluded; sources [] when not loaded."""
        return self._view("message", exclude, True)(m)

    def conversation_public(
        self, c: Conversation, exclude: frozenset[str] = frozenset({"last_activity_at"})
    ) -> dict[str, Any]:
        return self._view("conversation", exclude, True)(c)

    def state_public(self, s: StateEntry, exclude: frozenset[str] = frozenset({"conversation_id"})) -> dict[str, Any]:
        return self._view("state", exclude, True)(s)

    def source_public(self, s: Source) -> dict[str, Any]:
        return self._source_public(s)

    def message_from(self, d: dict[str, Any]) -> Message:
        return self._message_from(d)

    def conversation_from(self, d: dict[str, Any]) -> Conversation:
        return self._conversation_from(d)

    def state_from(self, d: dict[str, Any]) -> StateEntry:
        return self._state_from(d)

    # hot store -----------------------------------------------------------------------------------

    def encode_message(self, m: Message) -> bytes:
        return _dumps(self._message_hot_list(m))

    def decode_messages(self, tenant_id: str, conversation_id: uuid.UUID, raw: Sequence[bytes]) -> list[Message]:
        """Raises UnknownFormat when any entry has another stamp (or is not an array at all)."""
        if not raw:
            return []
        try:
            arrays = orjson.loads(b"[" + b",".join(raw) + b"]")
            f = self._message_from_hot
            return [f(tenant_id, conversation_id, a) for a in arrays]
        except UnknownFormat:
            raise
        except (orjson.JSONDecodeError, TypeError, KeyError, IndexError, ValueError) as exc:
            raise UnknownFormat(f"undecodable hot message: {exc}") from exc

    def encode_conversation(self, c: Conversation) -> bytes:
        return b'{"fv":' + self._stamp_json + b"," + _dumps(c)[1:]

    def decode_conversation(self, raw: bytes) -> Conversation:
        d = self._stamped(raw)
        return self._conversation_from(d)

    def encode_state(self, entry: StateEntry) -> bytes:
        # version:micros: lead (app/cache/lua/apply_state.lua reads them); the stamp follows.
        return f"{entry.version}:{_micros(entry.updated_at)}:{self.stamp}:".encode() + _dumps(entry.value)

    def decode_state(self, conversation_id: uuid.UUID, key: bytes, raw: bytes) -> StateEntry:
        parts = raw.split(b":", 3)
        if len(parts) != 4 or parts[2] != self._stamp_bytes:
            raise UnknownFormat("hot state entry of another format")
        version, micros, _, value = parts
        return self.state_cls(
            conversation_id=conversation_id,
            key=key.decode(),
            value=orjson.loads(value),
            version=int(version),
            updated_at=_EPOCH + timedelta(microseconds=int(micros)),
        )

    # events --------------------------------------------------------------------------------------

    def encode_event(self, event: DomainEvent) -> bytes:
        return b'{"fv":' + self._stamp_json + b"," + orjson.dumps(event, default=_event_default)[1:]

    def decode_event(self, data: bytes) -> DomainEvent:
        d = self._stamped(data)
        state, conversation, message = d.get("state"), d.get("conversation"), d.get("message")
        return DomainEvent(
            type=models.EventType(d["type"]),
            tenant_id=d["tenant_id"],
            conversation_id=uuid.UUID(d["conversation_id"]),
            at=datetime.fromisoformat(d["at"]),
            conversation=self._conversation_from(conversation) if conversation else None,
            message=self._message_from(message) if message else None,
            state_key=d.get("state_key"),
            state=self._state_from(state) if state else None,
        )

    def _stamped(self, raw: bytes) -> dict[str, Any]:
        try:
            d = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UnknownFormat(f"not JSON: {exc}") from exc
        if not isinstance(d, dict) or d.get("fv") != self.stamp:
            raise UnknownFormat(f"format {d.get('fv') if isinstance(d, dict) else None!r}, this reads {self.stamp!r}")
        return d


def _event_default(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value))


# --------------------------------------------------------------------------------------------------
# The process' codec. Call through the module (`codec.encode_message(...)`) rather than importing
# the names, so a test can swap in a codec for a record with one more field (`use`).
# --------------------------------------------------------------------------------------------------

CODEC = Codec()


def use(new: Codec) -> Codec:
    """Make `new` the process' codec; returns the previous one (tests restore it)."""
    global CODEC
    old, CODEC = CODEC, new
    g = globals()
    for name in _EXPORTED:
        g[name] = getattr(new, name)
    g["STAMP"] = new.stamp
    return old


_EXPORTED = (
    "message_public",
    "conversation_public",
    "state_public",
    "source_public",
    "message_from",
    "conversation_from",
    "state_from",
    "encode_message",
    "decode_messages",
    "encode_conversation",
    "decode_conversation",
    "encode_state",
    "decode_state",
    "encode_event",
    "decode_event",
)

STAMP = CODEC.stamp
message_public = CODEC.message_public
conversation_public = CODEC.conversation_public
state_public = CODEC.state_public
source_public = CODEC.source_public
message_from = CODEC.message_from
conversation_from = CODEC.conversation_from
state_from = CODEC.state_from
encode_message = CODEC.encode_message
decode_messages = CODEC.decode_messages
encode_conversation = CODEC.encode_conversation
decode_conversation = CODEC.decode_conversation
encode_state = CODEC.encode_state
decode_state = CODEC.decode_state
encode_event = CODEC.encode_event
decode_event = CODEC.decode_event
