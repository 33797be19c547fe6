"""Events to stored bytes and back: the single place where that happens.

:class:`EventMapper` is an ``eventsourcing`` :class:`~eventsourcing.persistence.Mapper`,
so the library's compressor and cipher hooks apply to every stored event. The
per-customer cipher (crypto-shredding, see :mod:`profilestore.keys`) is applied here too,
by :meth:`EventMapper.seal` and :meth:`EventMapper.unseal`: the library's cipher hook has
one key for everything and is never told the stream, so it cannot do that.

A sealed event is stored as ``0xE1 | occurred_at (8 bytes, microseconds) | nonce (12) |
AES-256-GCM ciphertext``. The associated data binds the ciphertext to its stream, its
version, its topic and its clear header: bytes copied to another stream, version or type
do not decrypt. The occurrence time stays readable, so an event whose key was destroyed
still reads back as :class:`Forgotten`: its type, time, stream and position, no payload.

Topics name event types by their stable tag, not by Python import path, so classes can
move without touching history. A type at ``class_version`` N > 1 is stored under the topic
``tag#vN``; reading an older version decodes to a dict and runs the class's
``upcast_vK_vK1(state)`` methods in turn (the library's upcasting convention) before
converting to the current class. Current-version events decode straight into their
Struct, which is the fast path.

Stored events are read leniently: the catalogue's bounds (lengths, ranges, amounts) are
checked when an event is appended, and tightening one must not make history unreadable.
An event that no longer passes them decodes into its class's *lenient twin*
(:func:`lenient_type`): a subclass with the same fields, tag and JSON, without the bounds
and the ``__post_init__`` checks. Folds see an ordinary instance of the class; one that
cannot fold it dead-letters it like any poison event (see :mod:`profilestore.projector`).
"""

from __future__ import annotations

import datetime as dt
import functools
import secrets
import struct
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar, Union
from uuid import UUID

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import Cipher, Compressor, Mapper, StoredEvent, Transcoder

from profilestore.errors import Undecryptable
from profilestore.events import EVENT_TYPES, Event

_VERSION_SEP = "#v"
SEALED = 0xE1
"""The first byte of a sealed (per-customer encrypted) stored event."""
_HEADER = 1 + 8
NONCE_BYTES = 12
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


class Forgotten(Event, tag="forgotten", frozen=True, kw_only=True):
    """A stored event whose customer was forgotten: its data key is destroyed, so only
    what was stored in clear is left (its type, time, stream and position). Readers skip
    it; it is never appended (it is not in the catalogue)."""

    stored_topic: str


def topic_for(cls: type[Event]) -> str:
    """The topic under which events of ``cls`` are written today."""
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag if cls.class_version == 1 else f"{tag}{_VERSION_SEP}{cls.class_version}"


def topics_for(cls: type[Event]) -> list[str]:
    """Every topic under which events of ``cls`` may have been stored (all versions)."""
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return [tag] + [f"{tag}{_VERSION_SEP}{v}" for v in range(2, cls.class_version + 1)]


def _split_topic(topic: str) -> tuple[str, int]:
    tag, sep, version = topic.partition(_VERSION_SEP)
    return tag, (int(version) if sep else 1)


S = TypeVar("S", bound=msgspec.Struct)


def lenient_type(cls: type[S]) -> type[S]:
    """``cls`` without its bounds: a subclass whose fields drop their ``msgspec.Meta``
    constraints (nested Structs become their own lenient twins) and whose
    ``__post_init__`` checks nothing. Same tag, same fields, same JSON."""
    return typing.cast(type[S], _lenient_type(cls))


def unchecked_type(cls: type[S]) -> type[S]:
    """``cls`` as a fold reads it (:meth:`EventMapper.decode_unchecked`): a subclass whose
    own fields drop their bounds and whose ``__post_init__`` checks nothing, while nested
    Structs (an order's lines, a location) stay the catalogue's classes, so that what a
    fold copies from an event into a section is the class the section declares."""
    return typing.cast(type[S], _lenient_type(cls, nested=False))


@functools.cache
def _lenient_type(cls: type[msgspec.Struct], *, nested: bool = True) -> type[msgspec.Struct]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for info in msgspec.structs.fields(cls):
        annotation = _unbounded(hints[info.name], nested=nested)
        if info.default is not msgspec.NODEFAULT:
            fields.append((info.name, annotation, info.default))
        elif info.default_factory is not msgspec.NODEFAULT:
            factory = info.default_factory
            fields.append((info.name, annotation, msgspec.field(default_factory=factory)))
        else:
            fields.append((info.name, annotation))
    config = cls.__struct_config__
    return msgspec.defstruct(
        f"{'Lenient' if nested else 'Unchecked'}{cls.__name__}",
        fields,
        bases=(cls,),
        module=cls.__module__,
        namespace={"__post_init__": _no_checks},
        tag=config.tag,
        tag_field=config.tag_field,
        frozen=True,
        kw_only=True,
        forbid_unknown_fields=config.forbid_unknown_fields,
        gc=False,
    )


def _no_checks(self: msgspec.Struct) -> None:
    """Stored events were checked when appended: reading them checks nothing again."""


def _unbounded(annotation: Any, *, nested: bool = True) -> Any:
    """``annotation`` without its bounds; with ``nested``, Structs inside it too."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return _unbounded(args[0], nested=nested)
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return lenient_type(annotation) if nested else annotation
    if origin in (Union, types.UnionType):
        return Union[tuple(_unbounded(a, nested=nested) for a in args)]  # noqa: UP007 - built from a tuple
    if origin is tuple:
        return tuple[tuple(a if a is Ellipsis else _unbounded(a, nested=nested) for a in args)]  # type: ignore[misc]
    if origin in (list, dict):
        return origin[tuple(_unbounded(a, nested=nested) for a in args)]
    return annotation


class EventMapper(Mapper[UUID]):
    """Maps :class:`~profilestore.events.Event` Structs to the library's StoredEvent."""

    def __init__(
        self,
        event_types: Mapping[str, type[Event]] | None = None,
        *,
        compressor: Compressor | None = None,
        cipher: Cipher | None = None,
    ) -> None:
        # The library's JSON transcoder is not used: msgspec encodes Structs directly.
        super().__init__(transcoder=_NoTranscoder(), compressor=compressor, cipher=cipher)
        self.event_types: dict[str, type[Event]] = dict(event_types or EVENT_TYPES)
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        self._decoders: dict[type[Event], msgspec.json.Decoder[Any]] = {}
        self._lenient: dict[type[Event], msgspec.json.Decoder[Any]] = {}
        self._unchecked: dict[str, msgspec.json.Decoder[Any]] = {}
        self._any_decoder = msgspec.json.Decoder()
        # Topics whose stored version is current: decode straight into the Struct.
        self._topics: dict[str, tuple[type[Event], msgspec.json.Decoder[Any]]] = {}
        self._topic_of: dict[type[Event], str] = {}

    def encode_state(self, event: Event) -> bytes:
        """The canonical JSON bytes of an event, before compression or encryption."""
        return self._encoder.encode(event)

    def to_stored(self, originator_id: UUID, originator_version: int, event: Event) -> StoredEvent:
        topic, state = self.stored_state(event)
        return StoredEvent(
            originator_id=originator_id,
            originator_version=originator_version,
            topic=topic,
            state=state,
        )

    def seal(
        self,
        cipher: AESGCM,
        stream: UUID,
        version: int,
        topic: str,
        occurred_at: dt.datetime,
        state: bytes,
    ) -> bytes:
        """``state`` encrypted with its stream's key, bound to stream, version and topic."""
        return sealed(
            cipher,
            aad_prefix(stream),
            version.to_bytes(8, "big"),
            topic.encode(),
            sealed_header(occurred_at),
            secrets.token_bytes(NONCE_BYTES),
            state,
        )

    def stored_state(self, event: Event) -> tuple[str, bytes]:
        """The topic and stored bytes of an event (compressed and encrypted by the
        library's hooks, if set): what :meth:`to_stored` stores, without the StoredEvent."""
        state = self._encoder.encode(event)
        if self.compressor:
            state = self.compressor.compress(state)
        if self.cipher:
            state = self.cipher.encrypt(state)
        cls = type(event)
        topic = self._topic_of.get(cls)
        if topic is None:
            topic = self._topic_of[cls] = topic_for(cls)
        return topic, state

    def unseal(
        self,
        cipher: AESGCM | None,
        stream: UUID,
        version: int,
        topic: str,
        state: bytes,
        prefix: bytes | None = None,
    ) -> bytes | Forgotten:
        """The plain bytes of a sealed event, or :class:`Forgotten` without its key
        (``prefix``: the stream's :func:`aad_prefix`, when the caller made it once)."""
        if not state or state[0] != SEALED:
            return state  # stored before the log was encrypted
        header = state[:_HEADER]
        if cipher is None:
            micros = int.from_bytes(header[1:], "big", signed=True)
            return Forgotten(
                event_id="",
                customer_id="",
                occurred_at=_EPOCH + dt.timedelta(microseconds=micros),
                stored_topic=topic,
            )
        nonce = state[_HEADER : _HEADER + NONCE_BYTES]
        if prefix is None:
            prefix = aad_prefix(stream)
        aad = prefix + version.to_bytes(8, "big") + header + topic.encode()
        try:
            return cipher.decrypt(nonce, state[_HEADER + NONCE_BYTES :], aad)
        except InvalidTag:
            raise Undecryptable(
                f"the stored event {stream}/{version} does not decrypt with its stream's key"
            ) from None

    def from_stored(self, stored: StoredEvent) -> Event:
        return self.decode(stored.topic, stored.state, stored)

    def decode(self, topic: str, state: bytes, stored: StoredEvent | None = None) -> Event:
        """The event stored under ``topic`` as ``state`` (decrypted, decompressed, upcast)."""
        cached = self._topics.get(topic)
        if cached is not None and not (self.cipher or self.compressor):
            try:
                fast: Event = cached[1].decode(state)
            except msgspec.ValidationError:
                return self._decode_lenient(cached[0], state)
            return fast
        tag, version = _split_topic(topic)
        try:
            cls = self.event_types[tag]
        except KeyError:
            where = f" {stored.originator_id}/{stored.originator_version}" if stored else ""
            raise LookupError(
                f"stored event{where} has the unknown topic {topic!r}; register its event class"
            ) from None
        if self.cipher:
            state = self.cipher.decrypt(state)
        if self.compressor:
            state = self.compressor.decompress(state)
        if version == cls.class_version:
            decoder = self._decoders.get(cls)
            if decoder is None:
                decoder = self._decoders[cls] = msgspec.json.Decoder(cls)
            self._topics[topic] = (cls, decoder)
            try:
                current: Event = decoder.decode(state)
            except msgspec.ValidationError:
                return self._decode_lenient(cls, state)
            return current
        document: dict[str, Any] = self._any_decoder.decode(state)
        while version < cls.class_version:
            getattr(cls, f"upcast_v{version}_v{version + 1}")(document)
            version += 1
        try:
            upcast: Event = msgspec.convert(document, cls)
        except msgspec.ValidationError:
            upcast = msgspec.convert(document, lenient_type(cls))
        return upcast

    def decode_unchecked(self, topic: str, state: bytes) -> Event:
        """The event stored under ``topic``, decoded into its class's unchecked twin
        (:func:`unchecked_type`).

        For the readers that fold (the consumer loop, rebuilds, verify, as-of): an event
        was checked when it was appended, and checking it again on every read cost four
        to ten times the decoding itself (an identifier's check validates it, a key's
        runs a pattern). The twin is an instance of the catalogue class with the same
        fields and JSON; only ``type(event) is Class`` tells them apart. An event whose
        nested values break today's bounds is read as :meth:`decode` reads it.
        """
        decoder = self._unchecked.get(topic)
        if decoder is None or self.cipher or self.compressor:
            tag, version = _split_topic(topic)
            cls = self.event_types.get(tag)
            if cls is None or version != cls.class_version or self.cipher or self.compressor:
                return self.decode(topic, state)  # an upcast, or the library's hooks
            decoder = self._unchecked[topic] = msgspec.json.Decoder(unchecked_type(cls))
        try:
            event: Event = decoder.decode(state)
        except msgspec.ValidationError:
            return self.decode(topic, state)
        return event

    def _decode_lenient(self, cls: type[Event], state: bytes) -> Event:
        """An event stored before a bound it breaks: decoded without the bounds."""
        decoder = self._lenient.get(cls)
        if decoder is None:
            decoder = self._lenient[cls] = msgspec.json.Decoder(lenient_type(cls))
        event: Event = decoder.decode(state)
        return event


_AAD = b"profilestore/event/1\0"


def aad_prefix(stream: UUID) -> bytes:
    """The part of a sealed event's associated data its stream fixes (made once per
    stream and batch by the log's append)."""
    return _AAD + stream.bytes


_PACK_HEADER = struct.Struct(">Bq").pack


def sealed_header(occurred_at: dt.datetime) -> bytes:
    """The clear header of a sealed event: the marker byte and the occurrence time (the
    microseconds since the epoch, 8 bytes, big-endian, signed)."""
    return _PACK_HEADER(SEALED, (occurred_at - _EPOCH) // _MICROSECOND)


def sealed(
    cipher: AESGCM,
    prefix: bytes,
    version: bytes,
    topic: bytes,
    header: bytes,
    nonce: bytes,
    state: bytes,
) -> bytes:
    """The stored form of a sealed event (see the module doc): ``header | nonce |
    ciphertext``, the associated data being the stream's ``prefix`` (:func:`aad_prefix`),
    the version (8 bytes, big-endian), the header and the topic (UTF-8)."""
    aad = b"".join((prefix, version, header, topic))
    return b"".join((header, nonce, cipher.encrypt(nonce, state, aad)))


class _NoTranscoder(Transcoder):
    """Placeholder for the base class; encoding is msgspec's job here."""

    def encode(self, obj: Any) -> bytes:  # pragma: no cover - never called
        raise NotImplementedError

    def decode(self, data: bytes) -> Any:  # pragma: no cover - never called
        raise NotImplementedError
