"""The decision core imports, and the package imports, where Ray cannot be imported."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import serve_cleanup.core

BLOCK_RAY = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("ray blocked")
sys.meta_path.insert(0, Block())
"""


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_RAY + code], capture_output=True, text=True, timeout=60)


def test_every_core_module_imports_with_ray_blocked():
    modules = [m.name for m in pkgutil.iter_modules(serve_cleanup.core.__path__, "serve_cleanup.core.")]
    assert {"serve_cleanup.core.engine", "serve_cleanup.core.records", "serve_cleanup.core.lifecycle"} <= set(modules)
    out = run_blocked(
        "import importlib\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "assert not any(n == 'ray' or n.startswith('ray.') for n in sys.modules), 'ray loaded'\n"
        "print('ok')\n"
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_the_package_root_imports_without_ray_and_loads_it_only_on_use():
    out = run_blocked(
        "import serve_cleanup\n"
        "assert serve_cleanup.SUPPORTED_RAY and serve_cleanup.ServeCleanupError\n"
        "assert serve_cleanup.Record.__name__ == 'Record'\n"
        "try:\n"
        "    serve_cleanup.register\n"
        "except ImportError as e:\n"
        "    print('register needs ray:', e)\n"
    )
    assert out.returncode == 0, out.stderr
    assert "register needs ray: ray blocked" in out.stdout
