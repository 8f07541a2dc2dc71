"""The Ray version gate fails loudly and names the supported range."""

import pytest

from serve_cleanup import SUPPORTED_RAY, UnsupportedRayVersionError, _compat


@pytest.mark.parametrize("version", ["2.59.9", "2.61.0", "3.0.0", "2.6.0"])
def test_unsupported_ray_versions_are_refused(version):
    with pytest.raises(UnsupportedRayVersionError) as err:
        _compat.check_ray_version(version)
    assert SUPPORTED_RAY in str(err.value) and version in str(err.value)
    assert isinstance(err.value, ImportError)


@pytest.mark.parametrize("version", ["2.60.0", "2.60.1", "2.60.3"])
def test_supported_ray_versions_pass(version):
    _compat.check_ray_version(version)


def test_is_serve_system_actor():
    assert _compat.is_serve_system_actor("SERVE_CONTROLLER_ACTOR", "serve")
    assert _compat.is_serve_system_actor("SERVE_PROXY_ACTOR-abc", "serve")
    assert _compat.is_serve_system_actor("SERVE_REPLICA::app#dep#x", "serve")
    assert _compat.is_serve_system_actor("SERVE_DEPLOYMENT_ACTOR::app::dep::v1::cache", "serve")
    assert not _compat.is_serve_system_actor("SERVE_REPLICA::app#dep#x", "other")
    assert not _compat.is_serve_system_actor("my-cache", "serve")
    assert not _compat.is_serve_system_actor("", "")


@pytest.mark.parametrize("raw, expected", [("2", 2.0), ("0.05", 0.05), ("0", 0.5), ("-1", 0.5), ("nan", 0.5), ("soon", 0.5)])
def test_reconcile_interval_is_validated(monkeypatch, raw, expected):
    from serve_cleanup import controller

    monkeypatch.setenv("SERVE_CLEANUP_RECONCILE_INTERVAL_S", raw)
    assert controller._reconcile_interval() == expected
