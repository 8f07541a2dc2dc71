"""``serve_cleanup.controller.ServeController``: the durable controller's class path of
release 0.1.0, kept importable on purpose.

Ray re-creates a crashed controller from the class path it was created with, so a
cluster whose controller was started by 0.1.0 imports this path after an in-place
upgrade. The class lives in ``serve_adapter/controller.py``; this module only re-exports
it (the one alias the package keeps for a public path).
"""

from serve_cleanup.serve_adapter.controller import ServeController

__all__ = ["ServeController"]
