"""The Ray side: the durable ``ServeController`` and the Ray implementation of each of
the core's ports.

``_ray`` holds every private Ray symbol the package touches (a Ray upgrade is one diff
there); ``kv`` is the one home of the GCS KV key layout; ``ports`` implements the core's
ports over GCS, ``ray.kill`` and Serve; ``controller`` adapts Serve's hooks to the core;
``faults`` and ``metrics`` are the crash-point and metrics ports; ``versions`` is the Ray
version gate (it imports no Ray).

Importing this package imports nothing: each module pays for its own imports.
"""
