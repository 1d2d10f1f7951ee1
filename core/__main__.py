"""`python -m core ...`: the same command line as `localllm`."""

from core.cli import main

raise SystemExit(main(prog_name="python -m core"))
