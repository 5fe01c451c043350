"""A fact's Avro message prepared before the ledger judges it, finished in one concatenation.

Most of a stored event's bytes follow from the fact alone: every ledger schema starts with
`event_id`, `occurred_at` and `recorded_at`, and only `recorded_at` (the moment the batch
is saved) and the fields the ledger fills in or encrypts depend on ledger state. So the
processes that parse a large file also encode each fact with `recorded_at` = 0 and hand
the message back split around that one byte; the writer puts the batch's `recorded_at`
in between, which gives exactly the bytes that encoding the finished record would give.
When the ledger changed the fact's fields (a filled-in customer, an encrypted name) the
writer encodes it itself. The fact's size bound (`encoded_size_bound`) travels with it, so
the writer need not compute it either, nor the aggregates the fact names (`named_references`),
which the writer asks the store about once per batch.
"""

from __future__ import annotations

from ledger.application import encoded_size_bound, named_references
from ledger.records import ENRICHED_FIELDS, Fact
from ledger.vault import PREFIX
from schemas.codec import AvroCodec
from schemas.errors import EncodeError

#: (message before `recorded_at`, message after it, the fact's encoded size bound, the
#: aggregates it names); the message parts are None when the ledger must encode the fact itself,
#: the aggregates None when they are left to the writer to find. A negative bound is an upper
#: estimate of the bound, negated (see `Preparer.prepare`).
Prepared = tuple[bytes | None, bytes | None, int, tuple[tuple[str, str], ...] | None]
_ENVELOPE = ("event_id", "occurred_at", "recorded_at")
#: Per field, what `encoded_size_bound` may count beyond 10 times the field's Avro bytes (a
#: personal field's ciphertext: its prefix, nonce, tag and base64's rounding).
_PER_FIELD = 50 + len(PREFIX)


def varint_size(value: int) -> int:
    """How many bytes `zigzag_varint(value)` has (without building them)."""
    return max(1, (((value << 1) ^ (value >> 63)).bit_length() + 6) // 7)


class Preparer:
    """Encodes facts ahead of judgement (in a worker process)."""

    def __init__(self, codec: AvroCodec, *, named: bool = True) -> None:
        self._codec = codec
        #: Whether the aggregates each fact names are found here: where the prepared facts
        #: are held as objects while a run is sorted (not as the worker's bytes), they cost
        #: more memory than finding them again when the fact is judged.
        self._named = named
        # Only types whose schema starts with the envelope can be split around recorded_at.
        self._splittable = {
            event_type
            for event_type in codec.registry.event_types
            if codec.registry.latest(event_type).field_names[:3] == _ENVELOPE
        }
        #: Fields the ledger fills in, per event type: a fact that leaves one out is finished
        #: by the ledger, so preparing its message would be wasted.
        self._filled: dict[str, tuple[str, ...]] = {}
        for event_type, name in ENRICHED_FIELDS:
            self._filled[event_type] = (*self._filled.get(event_type, ()), name)
        #: Each type's fields (but the envelope): those a parsed fact holds.
        self._fields = {
            event_type: frozenset(codec.registry.latest(event_type).field_names[3:])
            for event_type in self._splittable
        }

    def prepare(self, fact: Fact) -> Prepared:
        """The fact's size bound, its message split around `recorded_at` (when it can be) and
        the aggregates it names.

        With a message, the bound is an upper estimate of it from the message's length (see
        `_at_most`), negated: computing the bound itself walked every field again (~0.9 µs
        a fact), and it matters only for the rare fact near the size limit, for which the
        ledger computes it exactly (`ledger.bulk.BulkUnitOfWork.size_bound`).
        """
        named = named_references(fact) if self._named else None
        if fact.event_type not in self._splittable:
            return None, None, encoded_size_bound(fact), named
        if any(fact.data.get(name) is None for name in self._filled.get(fact.event_type, ())):
            return None, None, encoded_size_bound(fact), named
        record = dict(fact.data)
        record["event_id"] = fact.event_id
        record["occurred_at"] = fact.occurred_at
        record["recorded_at"] = 0
        try:
            message = self._codec.encode(fact.event_type, record)
        except EncodeError:
            # The writer encodes it again and reports the problem.
            return None, None, encoded_size_bound(fact), named
        event_id = fact.event_id.encode("utf-8")
        # 5-byte header, the event id as length + bytes, occurred_at: then recorded_at's byte.
        at = 5 + varint_size(len(event_id)) + len(event_id) + varint_size(fact.occurred_at)
        if message[at] != 0:
            return None, None, encoded_size_bound(fact), named
        return message[:at], message[at + 1 :], self._at_most(fact, message), named

    def _at_most(self, fact: Fact, message: bytes) -> int:
        """An upper estimate of `encoded_size_bound(fact)`, negated, from the fact's message.

        Every field the bound counts is one the message encodes in at least one byte: text as
        its length and UTF-8 bytes (the bound: 10 + the bytes, or a personal field's
        ciphertext, at most `_PER_FIELD` + twice the bytes), a list as its count, items and
        end (the bound: 10 + 10 + each item's bytes per item), anything else in 1 to 10 bytes
        (the bound: 10). So the bound is at most 64 + the event id's length + `_PER_FIELD` per
        field + 10 times the message's length, for a fact holding exactly its type's fields
        (any other fact gets the bound itself).
        """
        data = fact.data
        if data.keys() != self._fields[fact.event_type]:
            return encoded_size_bound(fact)
        return -(64 + len(fact.event_id) + _PER_FIELD * len(data) + 10 * len(message))


def finish(head: bytes, tail: bytes, recorded_at: bytes) -> bytes:
    """The stored message: the prepared parts around `recorded_at` (already zig-zag encoded)."""
    return b"".join((head, recorded_at, tail))
