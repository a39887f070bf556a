"""Events: the Redis contract (keys, entries, JSON Schema), the Redis connection, the publisher and its outbox, and
the subscriber client users read them with (`from pipeline.client import Subscriber`).

The contract's documented names are importable from here: `from pipeline.events import validate_entry`.
"""
from pipeline.events.contract import (
    SCHEMA_VERSION,
    detections_key,
    events_key,
    parse_entry,
    schema,
    validate_entry,
)

__all__ = ["SCHEMA_VERSION", "detections_key", "events_key", "parse_entry", "schema", "validate_entry"]
