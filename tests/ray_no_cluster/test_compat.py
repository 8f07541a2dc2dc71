"""The Ray version gate fails loudly and names the supported range."""

import pytest

from serve_cleanup import SUPPORTED_RAY, UnsupportedRayVersionError
from serve_cleanup.serve_adapter import _ray, kv


@pytest.mark.parametrize(
    "version", ["2.53.0", "2.53.9", "2.61.0", "2.61.0rc1", "2.61.0.dev0", "3.0.0.dev0", "2.6.0", "1.54.0", "garbage"]
)
def test_unsupported_ray_versions_are_refused(version):
    with pytest.raises(UnsupportedRayVersionError) as err:
        _ray.check_ray_version(version)
    assert SUPPORTED_RAY in str(err.value) and version in str(err.value)
    assert isinstance(err.value, ImportError)


@pytest.mark.parametrize("version", ["2.54.0", "2.55.0", "2.56.1", "2.57.0", "2.60.0", "2.60.3", "2.54.0rc1"])
def test_supported_ray_versions_pass(version):
    _ray.check_ray_version(version)


def test_is_serve_system_actor():
    assert _ray.is_serve_system_actor("SERVE_CONTROLLER_ACTOR", "serve")
    assert _ray.is_serve_system_actor("SERVE_PROXY_ACTOR-abc", "serve")
    assert _ray.is_serve_system_actor("SERVE_REPLICA::app#dep#x", "serve")
    # Controller-managed deployment actors exist from Ray 2.55.
    assert _ray.is_serve_system_actor(
        "SERVE_DEPLOYMENT_ACTOR::app::dep::v1::cache", "serve"
    ) == (_ray.RAY_MINOR >= (2, 55))
    assert not _ray.is_serve_system_actor("SERVE_REPLICA::app#dep#x", "other")
    assert not _ray.is_serve_system_actor("my-cache", "serve")
    assert not _ray.is_serve_system_actor("", "")


@pytest.mark.parametrize("raw, expected", [("2", 2.0), ("0.05", 0.05), ("0", 0.5), ("-1", 0.5), ("nan", 0.5), ("soon", 0.5)])
def test_reconcile_interval_is_validated(monkeypatch, raw, expected):
    from serve_cleanup.serve_adapter import controller

    monkeypatch.setenv("SERVE_CLEANUP_RECONCILE_INTERVAL_S", raw)
    assert controller._reconcile_interval() == expected


def test_version_keyed_facts_match_the_installed_ray():
    """The shims are keyed by version; check each key against what this Ray really has."""
    import inspect

    from ray.serve._private import constants, default_impl
    from ray.serve._private import controller as serve_controller
    from ray.serve._private.deployment_state import DeploymentStateManager

    assert _ray.HAS_DEPLOYMENT_ACTORS == hasattr(constants, "SERVE_DEPLOYMENT_ACTOR_PREFIX")
    assert _ray.HAS_CONTROLLER_OPTIONS == (
        "controller_options" in inspect.signature(default_impl.get_controller_impl).parameters
    )
    assert _ray.SERVE_RESUMES_SHUTDOWN == hasattr(serve_controller, "SHUTDOWN_IN_PROGRESS_KEY")
    assert _ray.HAS_GET_DEPLOYMENT_IDS == hasattr(DeploymentStateManager, "get_deployment_ids")


def test_private_symbols_used_exist_on_the_installed_ray():
    """Everything the package reaches in Ray's private modules, checked without a cluster."""
    from ray._raylet import InnerGcsClient

    for method in (
        "async_get_all_actor_info", "async_internal_kv_get", "async_internal_kv_put",
        "async_internal_kv_del", "async_internal_kv_keys", "async_internal_kv_multi_get",
        "internal_kv_get", "internal_kv_put", "internal_kv_del", "internal_kv_keys",
        "internal_kv_multi_get",
    ):
        assert hasattr(InnerGcsClient, method), method
    controller = _ray.ServeController
    for attr in ("shutdown", "graceful_shutdown", "_register_shutdown_cleanup_actor",
                 "_kill_registered_cleanup_actors", "check_alive"):
        assert callable(getattr(controller, attr)), attr
    fields = {f.name for f in _ray.core_worker_pb2.ActorHandle.DESCRIPTOR.fields}
    assert {"name", "ray_namespace"} <= fields
    assert hasattr(_ray.ActorHandle, "_serialization_helper")
    assert hasattr(_ray.ActorHandle, "_deserialization_helper")
    assert kv.PREFIX == b"ray-serve-serve-"


# Serve's controller module made unimportable in a fresh interpreter: on Ray < 2.60
# `import ray.serve` loads it (Ray's own import), so it is imported first, then taken out
# of sys.modules (and off its package), and any later import of it raises.
BLOCK_SERVE_CONTROLLER = """
import sys
import ray, ray.serve
import ray.serve._private as serve_private
NAME = "ray.serve._private.controller"
sys.modules.pop(NAME, None)
if hasattr(serve_private, "controller"):
    del serve_private.controller
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == NAME:
            raise ImportError("blocked: " + NAME)
sys.meta_path.insert(0, Block())
"""


def test_import_does_not_load_serve_controller_module_itself():
    """serve_cleanup imports Serve's controller module only on first use: importing the
    package and its Ray module needs it on no release (on Ray < 2.60 ``import ray.serve``
    loads it anyway, which is Ray's doing and taken out of the way here), and the first
    use of ``_ray.ServeController`` does import it."""
    import subprocess
    import sys

    code = BLOCK_SERVE_CONTROLLER + (
        "import serve_cleanup\n"
        "from serve_cleanup.serve_adapter import _ray\n"
        "print('imported', NAME in sys.modules)\n"
        "try:\n"
        "    _ray.ServeController\n"
        "except ImportError as e:\n"
        "    print('first use', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["imported False", "first use blocked: ray.serve._private.controller"], (
        out.stdout + out.stderr
    )


def test_serve_names_written_out_match_the_installed_serve():
    """_compat spells out Serve's names so that `list` and `status` never import Serve;
    they must be exactly Serve's."""
    from ray.serve._private import constants
    from ray.serve._private.storage.kv_store import SERVE_INTERNAL_KV_NAMESPACE, get_storage_key

    assert _ray.SERVE_NAMESPACE == constants.SERVE_NAMESPACE
    assert _ray.SERVE_CONTROLLER_NAME == constants.SERVE_CONTROLLER_NAME
    assert _ray.SERVE_LOGGER_NAME == constants.SERVE_LOGGER_NAME
    assert kv.NAMESPACE == SERVE_INTERNAL_KV_NAMESPACE
    assert kv.PREFIX == get_storage_key(f"ray-serve-{constants.SERVE_NAMESPACE}", "").encode()


def test_what_the_driverless_probe_reads_exists_on_the_installed_ray():
    """`status` and `list` without a driver: address resolution, the state accessor's bulk
    read, the actor-table fields that tell the controllers apart, Serve's cached client."""
    import inspect

    from ray._private import services
    from ray._raylet import GcsClientOptions, GlobalStateAccessor

    assert "addr" in inspect.signature(services.canonicalize_bootstrap_address).parameters
    assert callable(GcsClientOptions.create) and hasattr(GlobalStateAccessor, "get_actor_table")
    fields = {f.name for f in _ray.gcs_pb2.ActorTableData.DESCRIPTOR.fields}
    assert {"name", "ray_namespace", "state", "repr_name", "class_name", "pid", "num_restarts",
            "function_descriptor"} <= fields
    descriptor = _ray.gcs_pb2.ActorTableData().function_descriptor.python_function_descriptor
    assert hasattr(descriptor, "module_name")
    from ray.serve import context

    assert callable(context._set_global_client)


# use_cluster_token() in a fresh interpreter (it changes process-wide state: the
# environment and Ray's cached config), then what it left: RAY_AUTH_MODE, and the
# authentication mode Ray's own GCS client now runs in.
USE_TOKEN = """
import json, os
from serve_cleanup.serve_adapter import _ray
_ray.use_cluster_token()
try:
    from ray._raylet import AuthenticationMode, get_authentication_mode
    mode = "token" if get_authentication_mode() == AuthenticationMode.TOKEN else "other"
except ImportError:  # a Ray without token authentication
    mode = "other"
print(json.dumps({"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE"), "mode": mode}))
"""


def _use_token(home, **env: str) -> dict:
    import json
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    out = subprocess.run(
        [sys.executable, "-c", USE_TOKEN], capture_output=True, text=True, timeout=120,
        env={**clean, "HOME": str(home), **env},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_sending_the_clusters_token_works_on_the_installed_ray(tmp_path):
    """`status` and `list` call ``use_cluster_token()`` before they open a bare GCS client:
    on every supported Ray it returns; it switches token authentication on exactly when a
    token is there and RAY_AUTH_MODE says nothing, on the Rays that need it switched on
    (2.60 has ``maybe_enable_token_auth_if_token_available``; on 2.54-2.59 Ray's client
    reads the token itself where RAY_AUTH_MODE=token, so nothing changes there)."""
    from ray._private.authentication import authentication_token_setup as setup

    switches_on = hasattr(setup, "maybe_enable_token_auth_if_token_available")
    token = "ab" * 32

    # No token on this machine: nothing is switched on (a cluster without auth stays reachable).
    assert _use_token(tmp_path) == {"RAY_AUTH_MODE": None, "mode": "other"}
    # A token in the environment, as a KubeRay head container has it.
    expected = {"RAY_AUTH_MODE": "token", "mode": "token"} if switches_on else {"RAY_AUTH_MODE": None, "mode": "other"}
    assert _use_token(tmp_path, RAY_AUTH_TOKEN=token) == expected
    # ... or in ~/.ray/auth_token, where `ray start --head` writes it.
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(token)
    assert _use_token(tmp_path) == expected
    # RAY_AUTH_MODE says otherwise: it is respected.
    assert _use_token(tmp_path, RAY_AUTH_MODE="disabled") == {"RAY_AUTH_MODE": "disabled", "mode": "other"}
