"""The chaos harness's per-round *job driver*: a separate Ray driver (its own Ray job)
that registers detached helpers and pending placement groups with ``scope="job"`` (its
own job), some also with an app or deployment owner, and exits at a drawn moment, often
in the middle of a registration. Its job's end is then an owner deleted.

Run by ``harness.py`` (never on its own)::

    python job_driver.py '<json plan>'

The plan: ``address``, ``namespace``, ``tag``, ``timeout_s`` (a register call's),
``exit_after`` (seconds after "go"), ``linger`` (null, or: exit this long after the last
call, cleanly, unless ``exit_after`` came first), ``resource`` (what a pending placement group's bundle
asks for: no node has it) and ``items``: per item ``kind`` (``"actor"`` or ``"pg"``),
``named``, ``ping`` and ``owner`` (``[scope, app, deployment]`` of a second owner, or
null). It connects, prints ``{"job": <hex id>}``, waits for a line on stdin (the
harness's "go": the overlap starts), then makes and registers its items in turn while a
timer ends the process (``os._exit``, no disconnect) at ``exit_after``; if the items are
done first it waits for that moment and exits cleanly (``ray.shutdown()``). One JSON line on stdout for each step, flushed
at once, so the harness knows what was made and which calls returned, whatever moment the
exit comes at:

* ``{"made": id, "kind": k}`` once an item exists (before any call);
* ``{"try": id, "owner": o}`` before a register call (``o``: ``["job", <job>, ""]`` or the
  item's second owner), then ``{"ok": id, "owner": o}`` if it returned or
  ``{"fail": id, "owner": o, "error": ...}`` if it raised: a ``try`` with neither was cut
  off by the exit (it may or may not have been stored);
* ``{"exit": "timer"}`` or ``{"exit": "done"}`` just before the process ends.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

_out = threading.Lock()


def say(**fields) -> None:
    with _out:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


def main() -> None:
    plan = json.loads(sys.argv[1])
    import ray
    from ray.util.placement_group import placement_group

    import serve_cleanup

    ray.init(address=plan["address"], namespace=plan["namespace"], log_to_driver=False)
    job = ray.get_runtime_context().get_job_id()

    @ray.remote(num_cpus=0)
    class JobHelper:
        def ping(self) -> str:
            return "pong"

    say(job=job)
    sys.stdin.readline()  # "go"

    def leave() -> None:
        say(exit="timer")
        os._exit(0)

    timer = threading.Timer(plan["exit_after"], leave)
    timer.daemon = True
    started = time.monotonic()
    timer.start()
    timeout = plan["timeout_s"]
    for k, item in enumerate(plan["items"]):
        name = f"job-{plan['tag']}-{k}" if item["named"] else ""
        if item["kind"] == "pg":
            obj = placement_group([{plan["resource"]: 1.0}], name=name, lifetime="detached")
            obj_id = obj.id.hex()
        else:
            opts = {"lifetime": "detached"}
            if name:
                opts.update(name=name, namespace=plan["namespace"])
            obj = JobHelper.options(**opts).remote()
            obj_id = obj._actor_id.hex()
        say(made=obj_id, kind=item["kind"])
        if item["kind"] == "actor" and item["ping"]:
            try:
                ray.get(obj.ping.remote(), timeout=timeout)
            except Exception as e:
                say(error=obj_id, what=repr(e)[:300])
                continue
        owners = [("job", job, "")] + ([tuple(item["owner"])] if item["owner"] else [])
        for owner in owners:
            say(**{"try": obj_id, "owner": owner})
            try:
                if owner[0] == "job":
                    serve_cleanup.register(obj, scope="job", timeout_s=timeout)
                elif owner[0] == "app":
                    serve_cleanup.register(obj, scope="app", app=owner[1], timeout_s=timeout)
                else:
                    serve_cleanup.register(obj, scope="deployment", app=owner[1], deployment=owner[2],
                                           timeout_s=timeout)
            except Exception as e:
                say(fail=obj_id, owner=owner, error=repr(e)[:300])
            else:
                say(ok=obj_id, owner=owner)
    if plan.get("linger") is not None:
        time.sleep(plan["linger"])
    else:
        time.sleep(max(0.0, plan["exit_after"] - (time.monotonic() - started)))
    with _out:  # the timer may fire meanwhile: one exit line either way
        timer.cancel()
        sys.stdout.write(json.dumps({"exit": "done"}) + "\n")
        sys.stdout.flush()
        ray.shutdown()  # the clean way out (the timer's is abrupt)
        os._exit(0)


if __name__ == "__main__":
    main()
