"""Zone and line analytics on the tracker's identities, per camera (docs/analytics.md).

`CameraAnalytics` turns each tracked frame into `zone_enter`, `zone_exit`, `zone_dwell`, `line_cross` and
`zone_occupancy` events and keeps live counts; `AnalyticsStage` runs it for every camera between the tracker and the
view stage.
"""
from pipeline.analytics.camera import CameraAnalytics, Sighting
from pipeline.analytics.lines import Lines
from pipeline.analytics.stage import AnalyticsStage
from pipeline.analytics.zones import Zones

__all__ = ["AnalyticsStage", "CameraAnalytics", "Lines", "Sighting", "Zones"]
