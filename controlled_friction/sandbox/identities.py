"""The sandbox's human identities (CONTRACT: "Sandbox identities") and their static bearer tokens.

kube-apiserver reads them from ``--token-auth-file`` (CSV: ``token,user,uid,"group1,group2"``).
Tokens are random, made at the first `up`, and kept in the state directory until `down`.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
from pathlib import Path

from controlled_friction.names import SENIOR_GROUP

ENGINEERS_GROUP = "engineers"
ADMIN_USER = "cf-admin"
OPERATOR_USER = "operator"  # not a token user: a ServiceAccount (see cluster.kubeconfig_path)

USERS: dict[str, tuple[str, ...]] = {
    "alice": (SENIOR_GROUP,),
    "bob": (SENIOR_GROUP,),
    "carol": (SENIOR_GROUP,),
    "dave": (ENGINEERS_GROUP,),
    "mallory": (ENGINEERS_GROUP,),
    ADMIN_USER: ("system:masters",),
}


def _render(tokens: dict[str, str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    for user, groups in USERS.items():
        writer.writerow([tokens[user], user, f"cf-{user}", ",".join(groups)])
    return out.getvalue()


def read_tokens(path: Path) -> dict[str, str]:
    """user -> token, from the apiserver's token file."""
    rows = csv.reader(io.StringIO(path.read_text()))
    return {row[1]: row[0] for row in rows if len(row) >= 2}


def ensure_tokens(path: Path) -> dict[str, str]:
    """Keep existing tokens, add tokens for users that have none, rewrite the file if it changed."""
    existing = read_tokens(path) if path.exists() else {}
    tokens = {user: existing.get(user) or secrets.token_urlsafe(32) for user in USERS}
    text = _render(tokens)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    return tokens
