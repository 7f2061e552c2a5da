"""How every operator process logs in to the API server (controller and webhooks alike)."""

from __future__ import annotations

from typing import Any

import kopf


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # kopf's own client-library login reads $KUBECONFIG at import time; `run --kubeconfig` sets it later.
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
