"""The start-up .pth of `serve-cleanup enable`: writer/remover, and Python start-up with it.

No Ray here: start-up runs in a throw-away venv (no pip, no Ray) whose site-packages holds
the .pth, so "the package is missing" and "the package is there" are both real.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from serve_cleanup import _startup

SRC = str(Path(_startup.__file__).resolve().parents[1])  # the directory holding serve_cleanup/


def test_write_is_idempotent_and_remove_undoes_it(tmp_path):
    assert _startup.pth_state(str(tmp_path)) == "off"
    assert _startup.write_pth(str(tmp_path)) is True
    assert _startup.write_pth(str(tmp_path)) is False  # already there: nothing changed
    path = tmp_path / _startup.PTH_NAME
    assert path.read_text() == _startup.PTH_LINE
    assert _startup.pth_state(str(tmp_path)) == "on"
    assert [p.name for p in tmp_path.iterdir()] == [_startup.PTH_NAME]  # no temp file left
    assert _startup.remove_pth(str(tmp_path)) is True
    assert _startup.remove_pth(str(tmp_path)) is False
    assert list(tmp_path.iterdir()) == []


def test_a_file_we_did_not_write_is_reported_as_foreign(tmp_path):
    (tmp_path / _startup.PTH_NAME).write_text("import something_else\n")
    assert _startup.pth_state(str(tmp_path)) == "foreign"


def test_pth_is_one_import_line():
    # site.addpackage exec()s a line only if it starts with "import"; one line only.
    assert _startup.PTH_LINE.startswith("import ") and _startup.PTH_LINE.count("\n") == 1


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> tuple[Path, Path]:
    """A venv without pip and without Ray: (python, site-packages)."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()
    return python, Path(purelib)


def _run(python: Path, code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SERVE_CLEANUP"))}
    return subprocess.run(
        [str(python), "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60, env={**clean, **env},
    )


def test_startup_survives_a_missing_package(bare_venv):
    """`pip uninstall serve-cleanup` without `disable`: start-up still works, quietly."""
    python, site = bare_venv
    _startup.write_pth(str(site))
    try:
        out = _run(python, "import sys; assert 'ray' not in sys.modules; print('started')")
        assert out.returncode == 0 and out.stdout == "started\n" and out.stderr == ""
        out = _run(python, "pass")
        assert out.returncode == 0 and out.stderr == ""
    finally:
        _startup.remove_pth(str(site))


def test_startup_installs_the_hook_without_importing_ray_or_the_package(bare_venv):
    python, site = bare_venv
    _startup.write_pth(str(site))
    (site / "aaa-serve-cleanup-src.pth").write_text(SRC + "\n")
    try:
        out = _run(
            python,
            """
            import sys
            hooks = [f for f in sys.meta_path if getattr(f, "serve_cleanup_hook", False)]
            print(len(hooks), 'ray' in sys.modules, 'serve_cleanup' in sys.modules)
            """,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["1", "False", "False"]
    finally:
        _startup.remove_pth(str(site))
        (site / "aaa-serve-cleanup-src.pth").unlink()


# A stand-in for a Ray release serve_cleanup does not support: enough to see the swap and
# the fallback, no Ray. Its ray.serve._private.api has Ray's factory name.
FAKE_API = """
def get_controller_impl(controller_options=None):
    return "ray's own controller"
"""


@pytest.fixture
def fake_ray(tmp_path, bare_venv):
    import msgpack  # serve_cleanup's own dependency, linked into the bare venv

    python, site = bare_venv
    api = tmp_path / "ray" / "serve" / "_private"
    api.mkdir(parents=True)
    for d in (tmp_path / "ray", tmp_path / "ray" / "serve", api):
        (d / "__init__.py").write_text("")
    (tmp_path / "ray" / "__init__.py").write_text('__version__ = "2.99.0"\n')
    (api / "api.py").write_text(FAKE_API)
    libs = tmp_path / "libs"
    libs.mkdir()
    (libs / "msgpack").symlink_to(Path(msgpack.__file__).parent)
    _startup.write_pth(str(site))
    (site / "aaa-serve-cleanup-src.pth").write_text(f"{SRC}\n{libs}\n")
    yield python, str(tmp_path)
    _startup.remove_pth(str(site))
    (site / "aaa-serve-cleanup-src.pth").unlink()


CALL_FACTORY = """
import sys
from ray.serve._private import api
print(api.get_controller_impl.__doc__.split(':')[0])
print(api.get_controller_impl(controller_options=None))
"""


def test_swapped_factory_falls_back_to_rays_controller_with_an_error(fake_ray):
    """The durable controller cannot load on an unsupported Ray: ERROR, Ray's own."""
    python, fake = fake_ray
    out = _run(python, CALL_FACTORY, PYTHONPATH=fake)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["serve_cleanup", "ray's own controller"]
    assert "could not be loaded" in out.stderr and "NOT durable" in out.stderr
    assert "UnsupportedRayVersionError" in out.stderr and "2.99.0" in out.stderr


def test_no_test_hook_in_the_startup_module():
    """Tests simulate an unsupported Ray with a fake one (above), not with a switch that
    ships in production code."""
    source = Path(_startup.__file__).read_text()
    assert "FAULT" not in source and "SERVE_CLEANUP_STARTUP" not in source


def test_strict_refuses_instead_of_falling_back(fake_ray):
    python, fake = fake_ray
    out = _run(python, CALL_FACTORY, PYTHONPATH=fake, SERVE_CLEANUP_STRICT="1")
    assert out.returncode == 1
    assert "RuntimeError" in out.stderr and "SERVE_CLEANUP_STRICT is set" in out.stderr
    assert "ray's own controller" not in out.stdout


def test_env_switch_off_stands_aside_silently(fake_ray):
    python, fake = fake_ray
    out = _run(python, CALL_FACTORY, PYTHONPATH=fake, SERVE_CLEANUP_ENABLE="0")
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout.splitlines()[1] == "ray's own controller"


def test_site_packages_is_this_environments_purelib():
    assert _startup.site_packages() == sysconfig.get_paths()["purelib"]
    assert _startup.pth_path().startswith(sys.prefix)
