"""Monitoring: the live view stage (newest frame per camera, frame age), annotated video and Prometheus metrics."""
