"""The settings as a person reads them: in each command's help, and from ``citytel settings``.

Built from the :class:`~citytel.config.Settings` model itself, so that a new setting shows up
everywhere without being copied by hand. Secrets are masked, passwords inside URLs too.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from citytel.config import Settings

PREFIX = "CITYTEL_"
MASK = "***"


def _env_name(field: str) -> str:
    return f"{PREFIX}{field.upper()}"


def mask_url(text: str) -> str:
    """``text`` with the password of a ``scheme://user:password@host`` URL replaced by ***."""
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return MASK
    if not parts.scheme or password is None:
        return text
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def shown(value: Any) -> str:
    """A setting's value as printed: secrets masked, URLs without their password."""
    if value is None:
        return "(unset)"
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        return mask_url(secret) if "://" in secret else MASK
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return str(value)


def _default(name: str) -> Any:
    return Settings.model_fields[name].get_default(call_default_factory=True)


def matching(patterns: tuple[str, ...]) -> list[str]:
    """The settings' field names matching any of ``patterns`` (shell-style, e.g. ``mqtt_*``)."""
    return [name for name in Settings.model_fields if any(fnmatchcase(name, p) for p in patterns)]


def settings_epilog(patterns: tuple[str, ...] | None) -> str | None:
    """The settings a command reads, with their defaults, for the end of its ``--help``."""
    if patterns is None:
        return None
    names = matching(patterns)
    if not names:
        return "Settings: none (it reads no CITYTEL_* variable)."
    width = max(len(_env_name(n)) for n in names)
    lines = [f"  {_env_name(n):<{width}}  default: {shown(_default(n))}" for n in names]
    return "Settings (environment variables) it reads:\n" + "\n".join(lines)


def describe_settings(settings: Settings) -> str:
    """Every setting's effective value, secrets masked, and whether it was set or is a default."""
    names = list(Settings.model_fields)
    width = max(len(_env_name(n)) for n in names)
    lines = []
    for name in names:
        origin = "set" if name in settings.model_fields_set else "default"
        lines.append(f"{_env_name(name):<{width}}  {shown(getattr(settings, name))}  ({origin})")
    return "\n".join(lines) + "\n"
