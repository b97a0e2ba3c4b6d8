#!/usr/bin/env python3
"""streamforge analysts' example consumer.

Reads every topic ``<prefix>.events.<aggregate_type>`` from the earliest
offset to the end of each partition, validates each envelope's payload
against the committed JSON Schemas (``schemas/<aggregate_type>/
<event_type>.v<event_version>.json``, draft 2020-12) and prints one JSON
object: message counts and, per UTC day of ``occurred_at``, the daily active
users (distinct ``(subject_key, subject)`` pseudonyms) and the number of
``UserFollowed`` events. ``SubjectErased`` drops the erased pseudonym from
the day sets. See README.md beside this file.

Privacy rules kept here: payloads, metadata and subject ids are never
printed; validation errors are reported as location and keyword only.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError, best_match

#: The envelope contract this consumer understands (Kafka header ``envelope-version``).
ENVELOPE_VERSION = "1"
#: "user A followed user B" (docs/events.md, topic ``…relationship``).
FOLLOW_EVENT = "UserFollowed"
#: Reserved erasure event (docs/envelope.md, "Erasure").
SUBJECT_ERASED = "SubjectErased"

# Names used to build a schema file path: strict, so that a message can
# never point the consumer at a file outside the schemas folder.
AGGREGATE_TYPE_RE = re.compile(r"[a-z][a-z0-9_]*")
EVENT_TYPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
EVENT_VERSION_RE = re.compile(r"[0-9]+")

RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})"
)
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def parse_rfc3339(value: str) -> datetime | None:
    """An RFC 3339 date-time as an aware datetime, or None when it is not one."""
    m = RFC3339_RE.fullmatch(value)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction, offset = m.group(7), m.group(8)
    second = min(second, 59)  # RFC 3339 allows a leap second (:60)
    micro = int((fraction[1:] + "000000")[:6]) if fraction else 0
    if offset in ("Z", "z"):
        tz = timezone.utc
    else:
        sign = 1 if offset[0] == "+" else -1
        oh, om = int(offset[1:3]), int(offset[4:6])
        if oh > 23 or om > 59:
            return None
        tz = timezone(sign * timedelta(hours=oh, minutes=om))
    try:
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError:
        return None


def make_format_checker() -> FormatChecker:
    """Format assertion for the two formats the schemas use with meaning
    (``uuid``, ``date-time``), done here so the result does not depend on
    which optional jsonschema extras are installed. Other formats (schemars'
    ``uint32``, ``int64`` …) are annotations only."""
    checker = FormatChecker(formats=())

    @checker.checks("uuid")
    def _uuid(instance: object) -> bool:
        return not isinstance(instance, str) or UUID_RE.fullmatch(instance) is not None

    @checker.checks("date-time")
    def _date_time(instance: object) -> bool:
        return not isinstance(instance, str) or parse_rfc3339(instance) is not None

    return checker


FORMAT_CHECKER = make_format_checker()

#: The envelope (docs/envelope.md "Fields") plus the pseudonymous subject.
#: Unknown extra fields are allowed: additive changes bump nothing.
ENVELOPE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": [
        "event_id",
        "aggregate_type",
        "aggregate_id",
        "sequence",
        "position",
        "event_type",
        "event_version",
        "occurred_at",
        "payload",
        "metadata",
    ],
    "properties": {
        "event_id": {"type": "string", "format": "uuid"},
        "aggregate_type": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
        "aggregate_id": {"type": "string"},
        "sequence": {"type": "integer", "minimum": 1},
        "position": {"type": "integer"},
        "event_type": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_]*$"},
        "event_version": {"type": "string", "pattern": "^[0-9]+$"},
        "occurred_at": {"type": "string", "format": "date-time"},
        "metadata": {"type": "object"},
        # 64 lower-case hex characters: a keyed hash of the user id.
        "subject": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$", "maxLength": 64},
        "subject_key": {"type": ["string", "null"], "minLength": 1},
    },
    # A subject is only meaningful with the id of the key that made it.
    "if": {"required": ["subject"], "properties": {"subject": {"type": "string"}}},
    "then": {"required": ["subject_key"], "properties": {"subject_key": {"type": "string"}}},
}

#: Used for ``SubjectErased`` only while schemas/user has no file for it
#: (the type is reserved; docs/envelope.md gives this exact payload).
SUBJECT_ERASED_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": SUBJECT_ERASED,
    "type": "object",
    "additionalProperties": False,
    "required": ["subject_id", "erased_at"],
    "properties": {
        "subject_id": {"type": "string", "format": "uuid"},
        "erased_at": {"type": "string", "format": "date-time"},
    },
}

ENVELOPE_VALIDATOR = Draft202012Validator(ENVELOPE_SCHEMA, format_checker=FORMAT_CHECKER)


def describe_error(error: ValidationError) -> str:
    """One line about a validation error without any instance value (the
    payload may hold sealed personal fields): where, which keyword, and what
    the schema asked for."""
    where = error.json_path
    keyword = error.validator
    expected = error.validator_value
    if keyword == "required" and isinstance(error.instance, dict):
        missing = [name for name in expected if name not in error.instance]
        return f"{where}: missing required {missing}"
    if keyword == "additionalProperties" and isinstance(error.instance, dict):
        known = set(error.schema.get("properties", {}))
        extra = sorted(str(k)[:64] for k in error.instance if k not in known)
        return f"{where}: unexpected properties {extra}"
    if keyword in ("type", "format", "pattern", "const", "enum", "minimum", "maximum", "minLength", "maxLength"):
        return f"{where}: fails {keyword} {json.dumps(expected)}"
    return f"{where}: fails {keyword}"


class Schemas:
    """Payload validators loaded from the schemas folder, cached per
    ``(aggregate_type, event_type, event_version)``; None = no schema file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[tuple[str, str, str], Draft202012Validator | None] = {}

    def relative_path(self, aggregate_type: str, event_type: str, event_version: str) -> str:
        return f"{aggregate_type}/{event_type}.v{event_version}.json"

    def validator(self, aggregate_type: str, event_type: str, event_version: str) -> Draft202012Validator | None:
        key = (aggregate_type, event_type, event_version)
        if key not in self._cache:
            self._cache[key] = self._load(*key)
        return self._cache[key]

    def _load(self, aggregate_type: str, event_type: str, event_version: str) -> Draft202012Validator | None:
        if not (
            AGGREGATE_TYPE_RE.fullmatch(aggregate_type)
            and EVENT_TYPE_RE.fullmatch(event_type)
            and EVENT_VERSION_RE.fullmatch(event_version)
        ):
            return None
        path = self.root / aggregate_type / f"{event_type}.v{event_version}.json"
        if path.is_file():
            schema = json.loads(path.read_text(encoding="utf-8"))
            Draft202012Validator.check_schema(schema)
            return Draft202012Validator(schema, format_checker=FORMAT_CHECKER)
        if event_type == SUBJECT_ERASED and event_version == "1":
            return Draft202012Validator(SUBJECT_ERASED_SCHEMA, format_checker=FORMAT_CHECKER)
        return None


@dataclass
class Day:
    #: distinct (subject_key, subject) pseudonyms; never printed, only counted.
    subjects: set[tuple[str, str]] = field(default_factory=set)
    follows: int = 0


@dataclass
class Stats:
    messages: int = 0
    invalid: int = 0
    duplicates: int = 0
    days: dict[date, Day] = field(default_factory=lambda: defaultdict(Day))
    seen_event_ids: set[str] = field(default_factory=set)
    #: pseudonyms erased during this run: kept out of the day sets even when
    #: their other events arrive later (there is no order between topics).
    erased: set[tuple[str, str]] = field(default_factory=set)

    def erase(self, pseudonym: tuple[str, str]) -> None:
        self.erased.add(pseudonym)
        for day in self.days.values():
            day.subjects.discard(pseudonym)

    def result(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "invalid": self.invalid,
            "duplicates": self.duplicates,
            "days": {
                d.isoformat(): {"active_users": len(day.subjects), "follows": day.follows}
                for d, day in sorted(self.days.items())
            },
        }


class UnknownEnvelopeVersion(Exception):
    pass


def header(msg: Any, name: str) -> str | None:
    for key, value in msg.headers() or []:
        if key == name:
            return value.decode("utf-8", "replace") if value is not None else None
    return None


def report_invalid(stats: Stats, where: str, event_id: str, event_type: str, reason: str) -> None:
    stats.invalid += 1
    print(f"invalid: event_id={event_id} type={event_type} at {where}: {reason}", file=sys.stderr)


def handle(msg: Any, aggregate_type_of_topic: str, schemas: Schemas, stats: Stats) -> None:
    """Processes one Kafka message (already counted in ``stats.messages``)."""
    where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"

    version = header(msg, "envelope-version")
    if version is not None and version != ENVELOPE_VERSION:
        # docs/envelope.md "Versioning": stop on an envelope version we do not know.
        raise UnknownEnvelopeVersion(f"{where}: envelope-version {version!r}, this consumer knows {ENVELOPE_VERSION!r}")

    try:
        envelope = json.loads(msg.value())
    except (TypeError, ValueError) as e:  # None value, bad UTF-8 or bad JSON
        report_invalid(stats, where, "?", "?", f"not a JSON envelope ({type(e).__name__})")
        return
    if not isinstance(envelope, dict):
        report_invalid(stats, where, "?", "?", "envelope is not a JSON object")
        return

    def text(name: str) -> str:
        value = envelope.get(name)
        return value[:100] if isinstance(value, str) else "?"

    event_id, event_type = text("event_id"), f"{text('aggregate_type')}/{text('event_type')} v{text('event_version')}"
    error = best_match(ENVELOPE_VALIDATOR.iter_errors(envelope))
    if error is not None:
        report_invalid(stats, where, event_id, event_type, f"envelope {describe_error(error)}")
        return
    aggregate_type, name, version = envelope["aggregate_type"], envelope["event_type"], envelope["event_version"]
    if aggregate_type != aggregate_type_of_topic:
        report_invalid(stats, where, event_id, event_type, f"aggregate_type does not match the topic ({aggregate_type_of_topic})")
        return
    if event_id in stats.seen_event_ids:
        stats.duplicates += 1  # at-least-once delivery: the same event again
        return

    subject = envelope.get("subject")
    pseudonym = (envelope["subject_key"], subject) if isinstance(subject, str) else None

    if name == SUBJECT_ERASED:
        # The duty holds even if the payload is off: erase first, then validate.
        if pseudonym is None:
            report_invalid(stats, where, event_id, event_type, "SubjectErased without a subject: nothing can be erased")
            return
        stats.erase(pseudonym)

    validator = schemas.validator(aggregate_type, name, version)
    if validator is None:
        report_invalid(stats, where, event_id, event_type, f"no schema {schemas.relative_path(aggregate_type, name, version)}")
        return
    error = best_match(validator.iter_errors(envelope["payload"]))
    if error is not None:
        report_invalid(stats, where, event_id, event_type, f"payload {describe_error(error)}")
        return

    occurred = parse_rfc3339(envelope["occurred_at"])  # valid: checked by the envelope schema
    if occurred is None:
        report_invalid(stats, where, event_id, event_type, "envelope $.occurred_at: fails format \"date-time\"")
        return
    stats.seen_event_ids.add(event_id)
    day = stats.days[occurred.astimezone(timezone.utc).date()]
    if pseudonym is not None and name != SUBJECT_ERASED and pseudonym not in stats.erased:
        day.subjects.add(pseudonym)
    if name == FOLLOW_EVENT:
        day.follows += 1


@dataclass
class PartitionState:
    next_offset: int | None = None  # offset after the last message read
    #: reached the end (librdkafka's end-of-partition event, sent when a fetch
    #: comes back at the high watermark, also for an empty partition)
    eof: bool = False


def rdkafka_logger() -> logging.Logger:
    """librdkafka's log lines on stderr, at most a few per facility (an
    unreachable broker otherwise repeats the same line many times a second)."""
    seen: dict[str, int] = defaultdict(int)

    def few(record: logging.LogRecord) -> bool:
        facility = str(record.args[1]) if isinstance(record.args, tuple) and len(record.args) > 1 else ""
        seen[facility] += 1
        return seen[facility] <= 3

    logger = logging.getLogger("rdkafka")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("rdkafka: %(message)s"))
        handler.addFilter(few)
        logger.addHandler(handler)
        logger.propagate = False
    return logger


def topic_prefix(prefix: str) -> str:
    """``streamforge`` → ``streamforge.events.``; the relay's own form
    (``KAFKA_TOPIC_PREFIX=streamforge.events.``) is accepted as well."""
    prefix = prefix.rstrip(".")
    if prefix.endswith(".events"):
        prefix = prefix[: -len(".events")]
    return f"{prefix}.events."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", required=True, help="bootstrap servers, e.g. 127.0.0.1:9092")
    parser.add_argument("--prefix", required=True, help="topic prefix: reads <prefix>.events.<aggregate_type>")
    parser.add_argument("--schemas", required=True, type=Path, help="the repository's schemas/ folder")
    parser.add_argument("--group", default="analyst-example", help="consumer group id (default analyst-example)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to reach the end of every partition (default 30)")
    args = parser.parse_args(argv)

    if not args.schemas.is_dir():
        print(f"error: schemas folder {args.schemas} not found", file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.timeout
    schemas = Schemas(args.schemas)
    stats = Stats()

    # 1. The topics: every <prefix>.events.<aggregate_type> the broker has.
    wanted = topic_prefix(args.prefix)
    logger = rdkafka_logger()
    admin = AdminClient({"bootstrap.servers": args.brokers, "logger": logger})
    try:
        metadata = admin.list_topics(timeout=max(1.0, min(10.0, args.timeout)))
    except KafkaException as e:
        print(f"error: cannot list topics on {args.brokers}: {e}", file=sys.stderr)
        return 1
    topics: dict[str, str] = {}
    for name, topic in metadata.topics.items():
        suffix = name[len(wanted) :] if name.startswith(wanted) else ""
        if AGGREGATE_TYPE_RE.fullmatch(suffix) and topic.error is None:
            topics[name] = suffix
    if not topics:
        print(f"warning: no topic {wanted}<aggregate_type> on {args.brokers}", file=sys.stderr)
        print(json.dumps(stats.result()))
        return 0
    print(f"reading {len(topics)} topics: {', '.join(sorted(topics))}", file=sys.stderr)

    # 2. Subscribe and read every assigned partition from its beginning.
    consumer = Consumer(
        {
            "bootstrap.servers": args.brokers,
            "logger": logger,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,  # a full re-read every run: nothing to commit
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 100,
        }
    )
    partitions: dict[tuple[str, int], PartitionState] = {}
    current: set[tuple[str, int]] = set()  # assigned to this member now
    assigned_once = False

    def on_assign(c: Consumer, assignment: list[TopicPartition]) -> None:
        nonlocal assigned_once
        assigned_once = True
        for tp in assignment:
            key = (tp.topic, tp.partition)
            current.add(key)
            state = partitions.setdefault(key, PartitionState())
            # Always from the start (or, when a rebalance gives a partition
            # back, from where this run left it), whatever the group committed.
            tp.offset = state.next_offset if state.next_offset is not None else OFFSET_BEGINNING
        c.assign(assignment)

    def on_revoke(c: Consumer, revoked: list[TopicPartition]) -> None:
        for tp in revoked:
            key = (tp.topic, tp.partition)
            current.discard(key)
            if key in partitions:
                partitions[key].eof = False
        c.unassign()

    consumer.subscribe(sorted(topics), on_assign=on_assign, on_revoke=on_revoke)
    try:
        while True:
            if assigned_once and all(partitions[key].eof for key in current):
                break
            if time.monotonic() > deadline:
                unfinished = [
                    f"{t}[{p}] at offset {partitions[(t, p)].next_offset or 0}"
                    for t, p in sorted(current)
                    if not partitions[(t, p)].eof
                ]
                what = "; ".join(unfinished) if assigned_once else "no partition assignment from the group coordinator"
                print(f"error: timed out after {args.timeout:g} s: {what}", file=sys.stderr)
                return 3
            for msg in consumer.consume(num_messages=500, timeout=0.5):
                key = (msg.topic(), msg.partition())
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if key in partitions:
                            partitions[key].eof = True
                        continue
                    if err.fatal():
                        raise KafkaException(err)
                    print(f"warning: {err}", file=sys.stderr)
                    continue
                if key not in current:
                    continue  # already revoked
                partitions[key].next_offset = msg.offset() + 1
                stats.messages += 1
                handle(msg, topics[msg.topic()], schemas, stats)
    except UnknownEnvelopeVersion as e:
        print(f"error: {e}", file=sys.stderr)
        return 4
    except KafkaException as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        consumer.close()

    print(json.dumps(stats.result()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
