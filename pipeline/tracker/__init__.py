"""Tracking: `ByteTracker` gives detections identities per camera; `TrackerStage` runs one per camera in the pipeline.

`from pipeline.tracker import ByteTracker` is the documented public name.
"""
from pipeline.tracker.bytetrack import ByteTracker, TrackEnd, TrackStart
from pipeline.tracker.stage import TrackerStage

__all__ = ["ByteTracker", "TrackEnd", "TrackStart", "TrackerStage"]
