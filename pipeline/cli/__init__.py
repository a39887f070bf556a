"""The command line: `python run_pipeline.py` / `rpn-pipeline` (run, subscribe, demo and the model commands)."""
from pipeline.cli.commands import main

__all__ = ["main"]
