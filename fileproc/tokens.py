"""The webhook and admin tokens.

Configured ones win. Otherwise fileproc makes two random tokens the first
time it starts and keeps them in ``data_dir/tokens.json`` (mode 0600), so
nothing is ever open by default and the admin can read them when needed.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass

from fileproc.config import Settings
from fileproc.errors import ConfigError


@dataclass(frozen=True)
class Tokens:
    webhook: str
    admin: str

    def __repr__(self) -> str:  # never print a secret by accident
        return "Tokens(webhook=***, admin=***)"


def load_tokens(settings: Settings) -> Tokens:
    webhook = settings.api.webhook_token.get_secret_value()
    admin = settings.api.admin_token.get_secret_value()
    if webhook and admin:
        return Tokens(webhook, admin)
    path = settings.data_dir / "tokens.json"
    stored: dict[str, str] = {}
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable ({exc}); delete it to make new tokens") from exc
    if not stored.get("webhook") or not stored.get("admin"):
        stored = {"webhook": secrets.token_urlsafe(24), "admin": secrets.token_urlsafe(24)}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(stored, handle)
    return Tokens(webhook or stored["webhook"], admin or stored["admin"])
