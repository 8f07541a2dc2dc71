"""The way back works exactly when it is needed: `serve-cleanup --help`, `enable`, `disable`
and the switch part of `status` with Ray missing, broken (its import raises) or of a
release serve_cleanup does not support; every failure is one `Error: ...` line.

Each case runs the CLI in a subprocess of a throw-away venv that has no Ray at all (no
pip either): only this checkout's `src`, and its other dependencies (click, msgpack,
orjson, rich) linked from the test environment. "Broken" and "unsupported" put a fake `ray` first on PYTHONPATH, with
package metadata of its own (the version `status` reports is read from it); the fake's
import raises, so a command that imported Ray would show it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serve_cleanup import _startup

SRC = str(Path(_startup.__file__).resolve().parents[1])
FAKE_RAY_IMPORTED = "the fake ray was imported"


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    """A venv without pip and without Ray, with serve_cleanup's other dependencies on a
    path of their own."""
    import click
    import msgpack
    import orjson
    import rich

    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    libs = tmp_path_factory.mktemp("libs")
    for module in (click, msgpack, orjson, rich):
        (libs / module.__name__).symlink_to(Path(module.__file__).parent)
    return root / "bin" / "python", libs


def fake_ray(directory: Path, version: str, init: str) -> str:
    """A `ray` package and its metadata, as pip would lay them out."""
    (directory / "ray").mkdir(parents=True)
    (directory / "ray" / "__init__.py").write_text(init)
    meta = directory / f"ray-{version}.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: ray\nVersion: {version}\n")
    return str(directory)


RAYS = {
    "missing": None,
    "broken": ("2.60.0", "raise ImportError('libray.so: cannot open shared object file')\n"),
    "unsupported": ("2.99.0", f"raise RuntimeError({FAKE_RAY_IMPORTED!r})\n"),
}


@pytest.fixture(params=sorted(RAYS))
def cli(request, bare_python, tmp_path):
    """Run `serve-cleanup ARGS` with Ray missing, broken or unsupported."""
    python, libs = bare_python
    path = [str(libs), SRC]
    if RAYS[request.param] is not None:
        version, init = RAYS[request.param]
        path.insert(0, fake_ray(tmp_path / "fake", version, init))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SERVE_CLEANUP", "RAY_"))}
    env["PYTHONPATH"] = os.pathsep.join(path)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(python), "-m", "serve_cleanup.cli", *args],
            capture_output=True, text=True, timeout=60, env=env,
        )

    run.kind = request.param  # type: ignore[attr-defined]
    return run


def one_error_line(out: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.stderr
    return lines[0]


def test_help_works(cli):
    out = cli("--help")
    assert out.returncode == 0, out.stderr
    assert "enable" in out.stdout and "status" in out.stdout and out.stderr == ""


def test_enable_and_disable_work(cli, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    on = cli("enable", "--site-dir", str(site))
    assert on.returncode == 0 and on.stderr == "", on.stderr
    assert (site / _startup.PTH_NAME).read_text() == _startup.PTH_LINE
    off = cli("disable", "--site-dir", str(site))
    assert off.returncode == 0 and off.stderr == "", off.stderr
    assert not (site / _startup.PTH_NAME).exists()


def test_enable_into_a_missing_directory_is_one_error_line(cli):
    out = cli("enable", "--site-dir", "/nonexistent/site-packages")
    assert out.returncode == 1
    assert "/nonexistent/site-packages" in one_error_line(out)


def test_status_shows_the_switch_and_the_ray_found(cli, tmp_path):
    site = tmp_path / "site"  # status reports this environment's own switch: off here
    out = cli("status")
    assert out.returncode == 6  # Ray cannot be used here: the cluster is not probed
    assert out.stdout.startswith("switch:          off")
    ray_line = out.stdout.splitlines()[1]
    expected = {
        "missing": "ray:             not installed",
        "broken": "ray:             2.60.0 (broken: ray 2.60.0 is installed but cannot be imported (ImportError: libray.so",
        "unsupported": "ray:             2.99.0 (NOT supported: serve_cleanup supports >=2.54.0,<2.61)",
    }[cli.kind]
    assert ray_line.startswith(expected), out.stdout
    one_error_line(out)

    as_json = json.loads(cli("status", "--json").stdout)
    assert as_json["exit_code"] == 6 and as_json["switch"]["on"] is False
    assert as_json["ray"]["version"] == {"missing": None, "broken": "2.60.0", "unsupported": "2.99.0"}[cli.kind]
    assert as_json["ray"]["supported"] is (cli.kind == "broken")
    del site


def test_commands_that_need_ray_say_so_in_one_line(cli):
    for args in (["list"], ["gc"], ["shutdown", "-y"], ["unregister", "00ff"]):
        out = cli(*args)
        assert out.returncode == 6, (args, out.stderr)
        line = one_error_line(out)
        assert "needs a supported Ray" in line and FAKE_RAY_IMPORTED not in line


def test_a_mistyped_actor_id_is_a_usage_error_before_anything_else(cli):
    out = cli("unregister", "not-hex")
    assert out.returncode == 2 and "is not an actor id" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("args, message", [
    (["--app", "a"], "add --scope app, deployment or job"),
    (["--job", "01000000"], "add --scope app, deployment or job"),
    (["--scope", "job"], "--scope job needs --job"),
    (["--scope", "job", "--job", "nothex"], "scope='job' needs job=<a Ray job id in hex"),
    (["--scope", "app", "--app", "a", "--job", "01000000"], "--job goes with --scope job"),
    (["--scope", "app"], "--scope app needs --app"),
    (["--scope", "app", "--app", "a", "--deployment", "d"], "--scope app takes no --deployment"),
    (["--scope", "deployment", "--app", "a"], "--scope deployment needs --deployment"),
    (["--scope", "serve", "--app", "a"], "'serve' is not one of 'app', 'deployment', 'job'"),
])
def test_unregister_owner_options_are_checked_before_anything_else(cli, args, message):
    out = cli("unregister", "00ff", *args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_unregister_names_the_owner_it_removed():
    """The line `unregister --scope` prints names the owner (it used to call itself)."""
    from serve_cleanup.cli.records import _label

    assert _label(("app", "A", "")) == "app 'A'"
    assert _label(("deployment", "A", "D")) == "deployment 'A'/'D'"
