"""Which Ray releases serve_cleanup supports, decided without importing Ray.

The CLI's switch commands (``enable``, ``disable``, ``status`` without a cluster) use this
where Ray is missing, broken or of another release; ``_compat`` uses it to refuse an
unsupported Ray at import.
"""

from __future__ import annotations

import re
from typing import Optional

from serve_cleanup.errors import UnsupportedRayVersionError

SUPPORTED_RAY = ">=2.54.0,<2.61"
OLDEST, NEWEST = (2, 54), (2, 60)  # minor releases, both included

_RELEASE = re.compile(r"(\d+)\.(\d+)")


def minor_of(version: str) -> Optional[tuple[int, int]]:
    """(major, minor) of a version string such as ``2.60.0`` or ``2.61.0rc1``; None if it
    does not start like a release."""
    m = _RELEASE.match(version.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def is_supported(version: str) -> bool:
    """Compared by minor release, so a pre-release of an unsupported minor (``2.61.0rc1``,
    nightly ``3.0.0.dev0``) is refused too."""
    minor = minor_of(version)
    return minor is not None and OLDEST <= minor <= NEWEST


def check_ray_version(version: str) -> None:
    """Fail with a clear message on a Ray we have not tested against."""
    if not is_supported(version):
        raise UnsupportedRayVersionError(
            f"serve_cleanup supports ray[serve]{SUPPORTED_RAY}, but ray {version} is "
            f"installed. It subclasses Serve's controller, so other versions are not "
            f'safe. Install a supported Ray: pip install "ray[serve]{SUPPORTED_RAY}".'
        )


def installed_ray_version() -> Optional[str]:
    """The version of the installed ``ray`` distribution, read from its metadata (Ray is
    not imported); None if it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:
        return None
