"""``python -m serve_cleanup.cli``: the ``serve-cleanup`` command."""

from serve_cleanup.cli import main

main()
