"""`python -m core ...`: the same command line as `localllm`."""

from core.cli import run

run(prog_name="python -m core")
