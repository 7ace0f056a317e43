"""The versions of the harnesses whose internals we patch, checked before patching."""

from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version

SUPPORTED = {
    "llamafactory": (">=0.9.5", "<0.9.6"),
    "lmms_eval": (">=0.7.3", "<0.7.4"),
}
_DISTRIBUTION = {"llamafactory": "llamafactory", "lmms_eval": "lmms-eval"}


class UnsupportedVersionError(RuntimeError):
    pass


def supported_range(package: str) -> str:
    return ",".join(SUPPORTED[package])


def check_supported(package: str) -> str:
    """Return the installed version of `package`, or fail naming the supported range."""
    distribution = _DISTRIBUTION[package]
    try:
        installed = version(distribution)
    except PackageNotFoundError as error:
        raise UnsupportedVersionError(
            f"ue-dpo needs {distribution}{supported_range(package)}, which is not installed: "
            f"pip install '{distribution}{supported_range(package)}'"
        ) from error
    parsed = Version(installed)
    lower, upper = SUPPORTED[package]
    if not (parsed >= Version(lower[2:]) and parsed < Version(upper[1:])):
        raise UnsupportedVersionError(
            f"ue-dpo supports {distribution}{supported_range(package)} but {installed} is installed; "
            f"install a supported release: pip install '{distribution}{supported_range(package)}'"
        )
    return installed
