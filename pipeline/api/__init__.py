"""The HTTP API: control, health, /metrics and the live web page of a running pipeline (FastAPI on uvicorn)."""
