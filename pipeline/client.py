"""The subscriber client's public import path: `from pipeline.client import Subscriber` (README, docs/events.md).

The implementation lives with the rest of the event contract in `pipeline/events/subscriber.py`.
"""
from pipeline.events.subscriber import DetectionSubscriber, Subscriber, parse_since, since_id

__all__ = ["DetectionSubscriber", "Subscriber", "parse_since", "since_id"]
