"""The environment switch: every Serve controller created from this Python is durable.

``serve-cleanup enable`` writes :data:`PTH_NAME` into this environment's site-packages.
Python runs its one line at every start-up (``site``), in every process of the
environment: drivers, the ``serve`` CLI, Ray workers, and the dashboard's ServeHead
module behind ``serve deploy`` and KubeRay. The line loads this file by path, without
importing the ``serve_cleanup`` package (which imports Ray), and calls :func:`install`.
A missing or broken package makes the line do nothing: start-up never fails.

:func:`install` puts a finder on ``sys.meta_path`` that waits for
``ray.serve._private.api`` and ``ray.serve._private.controller_avatar`` (Java's start
path) to be imported, and then swaps the module-level name ``get_controller_impl`` that
each of them imported from ``default_impl`` for :func:`_durable_factory`. Nothing else
of Ray is touched, and nothing happens until a process creates a controller.

At that moment the factory loads the durable controller. If that fails (a Ray outside
the supported range, any import error), it logs an ERROR and returns Ray's own
controller, so Serve still comes up; with ``SERVE_CLEANUP_STRICT=1`` it raises instead.

This module imports only the standard library at import time; keep it that way.

Environment variables (read when a controller is created):

``SERVE_CLEANUP_ENABLE``
    ``0``/``false``/``off``: the hook stands aside and Ray's own controller is created
    (a way back to plain Serve without rebuilding an image). Anything else, or unset: on.
``SERVE_CLEANUP_STRICT``
    ``1``/``true``/``on``: refuse to create a plain controller when the durable one cannot
    be loaded (the factory raises), and make :func:`expect_durable` stop a plain one.
``RAY_SERVE_CONTROLLER_CALLBACK_IMPORT_PATH=serve_cleanup._startup:expect_durable``
    Ray's own hook, run inside every controller's ``__init__``: the guard below.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing is not imported at start-up: it costs milliseconds
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

PTH_NAME = "serve_cleanup_startup.pth"
ENV_ENABLE = "SERVE_CLEANUP_ENABLE"
ENV_STRICT = "SERVE_CLEANUP_STRICT"
GUARD_IMPORT_PATH = "serve_cleanup._startup:expect_durable"

# The one rule for "is this controller durable": its class is serve_cleanup's
# ServeController, defined in one of these modules. The first is this release's; the
# second is 0.1.0's, kept because Ray re-creates a crashed controller from the class path
# it was created with (serve_cleanup/controller.py re-exports the class there), so a
# cluster enabled by 0.1.0 keeps running controllers that the actor table names so.
# Read from a handle (client.controller), from the actor table without a driver (the
# probe), and from the class itself (the guard below).
DURABLE_CONTROLLER_MODULES = ("serve_cleanup.serve_adapter.controller", "serve_cleanup.controller")


def is_durable_controller_module(module: str) -> bool:
    """Whether a controller whose class comes from ``module`` is the durable one."""
    return module in DURABLE_CONTROLLER_MODULES


# Modules that bind their own copy of default_impl.get_controller_impl.
TARGETS = ("ray.serve._private.api", "ray.serve._private.controller_avatar")

# The .pth line. site.addpackage exec()s lines that start with "import"; it must be one
# line. It loads this file by path (the package __init__ imports Ray; start-up must not)
# under its real module name, so a later `import serve_cleanup._startup` reuses it. It uses
# the import system's own frozen modules, always loaded: importlib.util alone would add
# ~8 ms to every start-up.
PTH_LINE = (
    "import sys; exec("
    + repr(
        "try:\n"
        " import os, _frozen_importlib as b, _frozen_importlib_external as x\n"
        " n = 'serve_cleanup._startup'\n"
        " s = b._find_spec('serve_cleanup', None)\n"
        " f = os.path.join(list(s.submodule_search_locations)[0], '_startup.py')\n"
        " if n not in sys.modules and os.path.isfile(f):\n"
        "  p = x.spec_from_file_location(n, f)\n"
        "  m = b.module_from_spec(p)\n"
        "  sys.modules[n] = m\n"
        "  p.loader.exec_module(m)\n"
        "  m.install()\n"
        "except Exception:\n"
        " pass\n"
    )
    + ")\n"
)

_FALSE = ("0", "false", "off", "no")
_TRUE = ("1", "true", "on", "yes")


def enabled_by_env() -> bool:
    return os.environ.get(ENV_ENABLE, "").strip().lower() not in _FALSE


def strict() -> bool:
    return os.environ.get(ENV_STRICT, "").strip().lower() in _TRUE


def _log_error(msg: str) -> None:
    import logging

    # Serve's logger: in a driver it reaches stderr, in the dashboard the ServeHead log,
    # in the controller the controller log.
    logging.getLogger("ray.serve").error(msg)


# --- the hook ---------------------------------------------------------------------------


class _Hook:
    """A ``sys.meta_path`` finder that patches the target modules right after they load."""

    serve_cleanup_hook = True  # how install() recognises an installed hook

    def __init__(self) -> None:
        self._busy: set = set()  # names being looked up: another delegating finder may call back

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in TARGETS or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._busy.discard(fullname)
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original_exec = loader.exec_module

        def exec_module(module: Any) -> None:
            original_exec(module)
            patch_module(module)

        loader.exec_module = exec_module  # this loader instance serves only this module
        return spec


def installed() -> bool:
    """Whether the hook is active in this process."""
    return any(getattr(f, "serve_cleanup_hook", False) for f in sys.meta_path)


def install() -> None:
    """Install the hook (idempotent); patch the target modules already imported."""
    if not installed():
        sys.meta_path.insert(0, _Hook())
    for name in TARGETS:
        module = sys.modules.get(name)
        if module is not None:
            patch_module(module)


def patch_module(module: Any) -> None:
    current = getattr(module, "get_controller_impl", None)
    if current is None or getattr(current, "serve_cleanup_original", None) is not None:
        return
    module.get_controller_impl = _durable_factory(current)


def _durable_factory(original: Callable[..., Any]) -> Callable[..., Any]:
    def get_controller_impl(*args: Any, **kwargs: Any) -> Any:
        if not enabled_by_env():
            return original(*args, **kwargs)
        try:
            return load_durable_actor_class(*args, **kwargs)
        except Exception as e:
            if strict():
                raise RuntimeError(
                    f"serve_cleanup: the durable Serve controller could not be loaded ({e!r}) "
                    f"and {ENV_STRICT} is set, so no Serve controller is started. Fix the "
                    "install (see the error), or unset it to fall back to plain Serve."
                ) from e
            _log_error(
                f"serve_cleanup: the durable Serve controller could not be loaded ({e!r}); "
                "starting Ray Serve's own controller instead: cleanup registrations are NOT "
                f"durable. Fix the install, or set {ENV_STRICT}=1 to refuse instead."
            )
            return original(*args, **kwargs)

    get_controller_impl.serve_cleanup_original = original  # type: ignore[attr-defined]
    get_controller_impl.__doc__ = "serve_cleanup: the durable controller (see serve_cleanup._startup)."
    return get_controller_impl


def load_durable_actor_class(controller_options: Any = None) -> Any:
    """The durable controller as an actor class with Ray's own controller options."""
    from serve_cleanup.serve_adapter import _ray
    from serve_cleanup.serve_adapter.controller import ServeController

    return _ray.make_controller_actor_class(ServeController, controller_options)


# --- the guard --------------------------------------------------------------------------


def _controller_is_durable() -> Optional[bool]:
    """Inside a controller's __init__: whether it is the durable one (None: not found)."""
    frame = sys._getframe(1)
    while frame is not None:
        me = frame.f_locals.get("self")
        if me is not None and any(
            c.__name__ == "ServeController" and c.__module__ == "ray.serve._private.controller"
            for c in type(me).__mro__
        ):
            return any(is_durable_controller_module(c.__module__) for c in type(me).__mro__)
        frame = frame.f_back
    return None


def expect_durable() -> None:
    """``RAY_SERVE_CONTROLLER_CALLBACK_IMPORT_PATH=serve_cleanup._startup:expect_durable``.

    Ray calls it (no arguments) in every Serve controller's ``__init__``. A plain
    controller is logged as an ERROR in the controller log; with ``SERVE_CLEANUP_STRICT=1``
    it raises, so the plain controller does not start (Serve then fails to start).
    """
    durable = _controller_is_durable()
    if durable:
        return
    what = "a plain Ray Serve controller" if durable is False else "a Serve controller of unknown kind"
    msg = (
        f"serve_cleanup: {what} is starting where the durable one was expected "
        f"({GUARD_IMPORT_PATH} is set): cleanup registrations will NOT survive a "
        "controller restart. Run `serve-cleanup enable` in the head node's Python "
        "environment before `ray start`, or start Serve with serve_cleanup.start()."
    )
    if strict():
        raise RuntimeError(msg + f" Refusing to start ({ENV_STRICT} is set).")
    _log_error(msg)


# --- the .pth file ----------------------------------------------------------------------


def site_packages() -> str:
    """This environment's site-packages (purelib), where ``enable`` writes the .pth."""
    import sysconfig

    return sysconfig.get_paths()["purelib"]


def pth_path(directory: Optional[str] = None) -> str:
    return os.path.join(directory or site_packages(), PTH_NAME)


def pth_state(directory: Optional[str] = None) -> str:
    """``"on"`` (our line), ``"off"`` (no file) or ``"foreign"`` (a file we did not write)."""
    path = pth_path(directory)
    if not os.path.exists(path):
        return "off"
    with open(path, encoding="utf-8") as f:
        return "on" if f.read() == PTH_LINE else "foreign"


def write_pth(directory: Optional[str] = None) -> bool:
    """Write the .pth file; False if it was already there as written."""
    path = pth_path(directory)
    if pth_state(directory) == "on":
        return False
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(PTH_LINE)
    os.replace(tmp, path)  # Python starting meanwhile sees the old file or the new one
    return True


def remove_pth(directory: Optional[str] = None) -> bool:
    """Remove the .pth file; False if there was none."""
    try:
        os.remove(pth_path(directory))
    except FileNotFoundError:
        return False
    return True
