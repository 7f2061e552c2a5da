"""The only module that talks to the Kubernetes API (official client), for the operator and the CLI.

Transient failures (5xx, connection errors) are retried a few times with tenacity; 409 conflicts are
never retried here: they surface as `Conflict` so the caller re-reads and re-plans instead of
re-sending a stale write.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from controlled_friction import names, traffic_routing

USER_AGENT = "controlled-friction/0.1"


class Conflict(Exception):
    """The object changed since it was read (HTTP 409)."""


class NotFound(Exception):
    pass


class RouteConflict(Conflict):
    """An HTTPRoute JSON patch was refused (HTTP 422: its `test` failed, the route changed since it was
    read); answered like a 409: re-read the route and re-plan."""


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiException):
        return exc.status in (429, 500, 502, 503, 504) or exc.status == 0
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


_retry = retry(
    retry=retry_if_exception(_transient),
    stop=stop_after_attempt(3),
    wait=wait_exponential(multiplier=0.2, max=2),
    reraise=True,
)


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return _retry(fn)(*args, **kwargs)
    except ApiException as exc:
        if exc.status == 409:
            raise Conflict(str(exc.reason)) from exc
        if exc.status == 404:
            raise NotFound(str(exc.reason)) from exc
        raise


def resource_of(url: str) -> str:
    """`deployments`, `rollouts/status`, `events`... from a request URL (a small, fixed label set)."""
    path = urllib3.util.parse_url(url).path or ""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"]:
        rest = parts[2:]  # /api/v1/...
    elif parts[:1] == ["apis"]:
        rest = parts[3:]  # /apis/group/version/...
    else:
        return "other"
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]  # a namespaced resource; /namespaces[/name] alone is the namespaces resource
    if not rest:
        return "other"
    return rest[0] + (f"/{rest[2]}" if len(rest) >= 3 else "")


def _timed(request: Callable[..., Any], observe: Callable[[str, str, float], None]) -> Callable[..., Any]:
    def timed(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return request(method, url, *args, **kwargs)
        finally:
            verb = method.lower() + ("-dryrun" if "dryRun=" in url else "")
            observe(verb, resource_of(url), time.perf_counter() - start)

    return timed


def _status_message(exc: ApiException) -> str:
    """The API server's own explanation from a Status body (it names the offending fields)."""
    try:
        return str(json.loads(exc.body or "")["message"])
    except (TypeError, ValueError, KeyError):
        return str(exc.reason)


def merge_patch_diff(old: Any, new: Any) -> Any:
    """RFC 7386 merge patch turning `old` into `new` (removed keys become null)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    out: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        out[key] = None
    for key, value in new.items():
        if key not in old:
            out[key] = value
        elif old[key] != value:
            out[key] = merge_patch_diff(old[key], value)
    return out


def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """In-cluster config when running in a pod, else the kubeconfig (flag, $KUBECONFIG, ~/.kube/config)."""
    if kubeconfig is None and context is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return client.ApiClient()
        except config.ConfigException:
            pass
    cfg = client.Configuration()
    # $KUBECONFIG is read here, not at import time, so a caller may set it late.
    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or None
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig, context=context, client_configuration=cfg
    )
    return client.ApiClient(cfg)


class Kube:
    """Typed façade over the API calls controlled-friction needs."""

    def __init__(self, api: client.ApiClient | None = None, pool_size: int | None = None,
                 observe: Callable[[str, str, float], None] | None = None) -> None:
        """`observe(verb, resource, seconds)` is told the time of every HTTP request (the operator's
        request histogram); the CLI passes none."""
        self.api = api or load_api_client()
        if pool_size:  # one connection per worker thread, so reconciles never queue for a socket
            self.api.configuration.connection_pool_maxsize = pool_size
            self.api.rest_client = type(self.api.rest_client)(self.api.configuration)
        if observe is not None:
            self.api.rest_client.request = _timed(self.api.rest_client.request, observe)  # type: ignore[method-assign]
        self.api.user_agent = USER_AGENT
        self.custom = client.CustomObjectsApi(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.core = client.CoreV1Api(self.api)

    def _dict(self, obj: Any) -> dict[str, Any]:
        return self.api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]

    # ------------------------------------------------------------ rollouts

    def get_rollout(self, namespace: str, name: str) -> dict[str, Any]:
        return _call(
            self.custom.get_namespaced_custom_object,
            names.GROUP,
            names.VERSION,
            namespace,
            names.ROLLOUT_PLURAL,
            name,
        )

    def list_rollouts(self, namespace: str | None = None) -> list[dict[str, Any]]:
        if namespace:
            res = _call(
                self.custom.list_namespaced_custom_object,
                names.GROUP,
                names.VERSION,
                namespace,
                names.ROLLOUT_PLURAL,
            )
        else:
            res = _call(
                self.custom.list_cluster_custom_object, names.GROUP, names.VERSION, names.ROLLOUT_PLURAL
            )
        return list(res.get("items", []))

    def patch_rollout_annotations(
        self, namespace: str, name: str, changes: dict[str, str | None], resource_version: str | None = None
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {"annotations": changes}
        if resource_version:
            meta["resourceVersion"] = resource_version
        return _call(
            self.custom.patch_namespaced_custom_object,
            names.GROUP,
            names.VERSION,
            namespace,
            names.ROLLOUT_PLURAL,
            name,
            {"metadata": meta},
        )

    def write_rollout_status(
        self, namespace: str, name: str, old: dict[str, Any], new: dict[str, Any], resource_version: str
    ) -> dict[str, Any]:
        """Patch status from `old` to `new`, only if the object is still at `resource_version`."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": merge_patch_diff(old, new)}
        return _call(
            self.custom.patch_namespaced_custom_object_status,
            names.GROUP,
            names.VERSION,
            namespace,
            names.ROLLOUT_PLURAL,
            name,
            body,
        )

    # ------------------------------------------------------------ policies & namespaces

    def list_policies(self) -> list[dict[str, Any]]:
        res = _call(self.custom.list_cluster_custom_object, names.GROUP, names.VERSION, names.POLICY_PLURAL)
        return list(res.get("items", []))

    def patch_policy_status(self, name: str, status: dict[str, Any]) -> None:
        _call(
            self.custom.patch_cluster_custom_object_status,
            names.GROUP,
            names.VERSION,
            names.POLICY_PLURAL,
            name,
            {"status": status},
        )

    def peering_object(self, name: str) -> dict[str, Any] | None:
        """kopf's ClusterKopfPeering `name`, or None if it does not exist (read with `list`, which the
        operator needs for kopf anyway)."""
        res = _call(self.custom.list_cluster_custom_object, "kopf.dev", "v1", "clusterkopfpeerings",
                    field_selector=f"metadata.name={name}", _request_timeout=10)
        items = res.get("items", [])
        return dict(items[0]) if items else None

    def peering_status(self, name: str) -> dict[str, Any] | None:
        """The status of the peering object `name` (its peers), or None if it does not exist."""
        obj = self.peering_object(name)
        return None if obj is None else dict(obj.get("status") or {})

    def own_webhook_configurations(self, name: str, owner: dict[str, Any]) -> list[str]:
        """Make `owner` the owner of the webhook configurations named `name` (so deleting the owner, as
        `helm uninstall` does, garbage-collects them); returns the kinds that exist and were patched."""
        reg = client.AdmissionregistrationV1Api(self.api)
        done = []
        patch = {"metadata": {"ownerReferences": [owner]}}
        for kind, fn in (("mutating", reg.patch_mutating_webhook_configuration),
                         ("validating", reg.patch_validating_webhook_configuration)):
            try:
                _call(fn, name, patch)
                done.append(kind)
            except NotFound:
                pass
        return done

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        ns = _call(self.core.read_namespace, namespace)
        return dict((ns.metadata.labels if ns.metadata else None) or {})

    # ------------------------------------------------------------ deployments & services

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._dict(_call(self.apps.read_namespaced_deployment, name, namespace))
        except NotFound:
            return None

    def create_deployment(self, namespace: str, body: dict[str, Any]) -> None:
        _call(self.apps.create_namespaced_deployment, namespace, body)

    def replace_deployment_template(
        self, namespace: str, name: str, template: dict[str, Any], replicas: int
    ) -> None:
        # A JSON patch replaces the whole template; a merge patch would keep removed keys alive.
        ops = [
            {"op": "replace", "path": "/spec/template", "value": template},
            {"op": "replace", "path": "/spec/replicas", "value": replicas},
        ]
        _call(self.apps.patch_namespaced_deployment, name, namespace, ops)

    def dry_run_deployment(self, namespace: str, body: dict[str, Any], exists: bool) -> str | None:
        """Why the API server would refuse to create `body` (or, if it `exists`, put its template in
        place); None: it would accept it. A server-side dry run: nothing is written."""
        name = body["metadata"]["name"]
        try:
            if not exists:
                _call(self.apps.create_namespaced_deployment, namespace, body, dry_run="All")
            else:
                ops = [
                    {"op": "replace", "path": "/spec/template", "value": body["spec"]["template"]},
                    {"op": "replace", "path": "/spec/replicas", "value": body["spec"]["replicas"]},
                ]
                _call(self.apps.patch_namespaced_deployment, name, namespace, ops, dry_run="All")
        except (Conflict, NotFound):
            return None  # created or deleted meanwhile: the real write will sort it out
        except ApiException as exc:
            if exc.status in (400, 422):
                return _status_message(exc)
            raise
        return None

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        _call(self.apps.patch_namespaced_deployment, name, namespace, {"spec": {"replicas": replicas}})

    def get_route(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The HTTPRoute as the API server holds it now (only after a refused patch: the shell reads
        routes from its watch-fed index)."""
        try:
            return self._dict(_call(self.custom.get_namespaced_custom_object, traffic_routing.GATEWAY_GROUP,
                                    traffic_routing.HTTPROUTE_VERSION, namespace,
                                    traffic_routing.HTTPROUTE_PLURAL, name))
        except NotFound:
            return None

    def patch_route(self, namespace: str, name: str, patch: list[dict[str, Any]]) -> None:
        """Apply a JSON patch (RFC 6902) to an HTTPRoute: only the paths it names change. A failed
        `test` (422) or a conflict raises RouteConflict; a route deleted meanwhile NotFound."""
        try:
            _call(self.custom.patch_namespaced_custom_object, traffic_routing.GATEWAY_GROUP,
                  traffic_routing.HTTPROUTE_VERSION, namespace, traffic_routing.HTTPROUTE_PLURAL, name, patch,
                  _content_type=traffic_routing.JSON_PATCH_CONTENT_TYPE)
        except Conflict as exc:
            raise RouteConflict(str(exc)) from exc
        except ApiException as exc:
            if exc.status == 422:
                raise RouteConflict(_status_message(exc)) from exc
            raise

    def service_exists(self, namespace: str, name: str) -> bool:
        try:
            _call(self.core.read_namespaced_service, name, namespace)
            return True
        except NotFound:
            return False

    def create_service(self, namespace: str, body: dict[str, Any]) -> None:
        with contextlib.suppress(Conflict):  # created meanwhile: fine
            _call(self.core.create_namespaced_service, namespace, body)

    def whoami(self) -> str:
        """The username this client authenticates as (SelfSubjectReview)."""
        review = _call(client.AuthenticationV1Api(self.api).create_self_subject_review,
                       {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        return str(review.status.user_info.username)

    # ------------------------------------------------------------ secrets & webhook configurations

    def read_secret_data(self, namespace: str, name: str) -> dict[str, Any]:
        secret = _call(self.core.read_namespaced_secret, name, namespace, _request_timeout=10)
        return dict(secret.data or {})

    def create_secret(self, namespace: str, name: str, data: dict[str, str], labels: dict[str, str]) -> dict[str, Any]:
        body = {"metadata": {"name": name, "namespace": namespace, "labels": labels}, "type": "Opaque", "data": data}
        return dict(_call(self.core.create_namespaced_secret, namespace, body).data or {})

    # ------------------------------------------------------------ events

    def record_event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Create an Event, or bump the count of the identical one (so repeats do not flood)."""
        meta = involved["metadata"]
        digest = hashlib.sha1(f"{meta['uid']}/{reason}/{message}".encode()).hexdigest()[:12]
        name = f"{meta['name']}.{digest}"
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ns = meta["namespace"]
        body = {
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", names.API_VERSION),
                "kind": involved.get("kind", "Rollout"),
                "name": meta["name"],
                "namespace": ns,
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": "controlled-friction"},
            "reportingComponent": "controlled-friction",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            _call(self.core.create_namespaced_event, ns, body)
        except Conflict:
            old = _call(self.core.read_namespaced_event, name, ns)
            patch = {"count": (old.count or 1) + 1, "lastTimestamp": now}
            _call(self.core.patch_namespaced_event, name, ns, patch)

    def list_events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        res = _call(
            self.core.list_namespaced_event,
            namespace,
            field_selector=f"involvedObject.name={name},involvedObject.kind=Rollout",
        )
        return [self._dict(e) for e in res.items]
