"""What an approver approves: the stable → canary pod-template diff, its one-line summary, and the
change record and author that go with it.

Pure: dicts in, dataclasses out. The stable template comes from the `<name>-stable` Deployment, which
the API server has defaulted (imagePullPolicy, terminationMessagePath, probe periods, ...) and the
operator has labelled (rollout, track, revision); the canary template is the Rollout's
`spec.template` as written. `normalize` removes both kinds of noise so that only real changes show.
Lists of named things (containers, env vars, ports, volumes, mounts) are matched by name, not by
position, so reordering env vars is no change and one new variable is one change.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from controlled_friction import names
from controlled_friction.revision import revision_of

# The contract's change-record annotation (ticket id or URL and a one-line summary of the change).
ANN_CHANGE_RECORD = names.ANN_CHANGE_RECORD

ChangeKind = Literal["added", "removed", "changed"]
OPERATOR_LABELS = (names.LABEL_ROLLOUT, names.LABEL_TRACK, names.LABEL_REVISION)
CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
NO_CHANGE = "no change to the pod template"

# Values the API server fills in when a field is left out (k8s.io/kubernetes pkg/apis/core/v1/defaults.go).
_POD_DEFAULTS: dict[str, Any] = {
    "restartPolicy": "Always",
    "terminationGracePeriodSeconds": 30,
    "dnsPolicy": "ClusterFirst",
    "securityContext": {},
    "schedulerName": "default-scheduler",
}
_CONTAINER_DEFAULTS: dict[str, Any] = {
    "terminationMessagePath": "/dev/termination-log",
    "terminationMessagePolicy": "File",
    "resources": {},
}
_PROBE_DEFAULTS: dict[str, Any] = {"timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1,
                                   "failureThreshold": 3}
# Maps of names whose entries are reported one by one.
_MAPS = ("annotations", "labels", "nodeSelector")
# Summary order of counted things.
_COUNTED_ORDER = ("env var", "pod annotation", "pod label")
# Keys that identify the items of a list, by the list's field name (when every item has it, uniquely).
_LIST_KEYS: dict[str, tuple[str, ...]] = {
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "ports": ("name", "containerPort"),
    "tolerations": ("key",),
    "hostAliases": ("ip",),
}


# ---------------------------------------------------------------- normalisation


def default_pull_policy(image: str) -> str:
    """The API server's default imagePullPolicy: Always for `:latest` or an untagged image."""
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else ""
    return "Always" if tag in ("", "latest") else "IfNotPresent"


def _drop_defaults(obj: dict[str, Any], defaults: dict[str, Any]) -> None:
    for key, value in defaults.items():
        if key in obj and obj[key] == value:
            del obj[key]


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


def _normalize_probe(probe: Any) -> None:
    if not isinstance(probe, dict):
        return
    _drop_defaults(probe, _PROBE_DEFAULTS)
    http = probe.get("httpGet")
    if isinstance(http, dict) and http.get("scheme") == "HTTP":
        del http["scheme"]


def _normalize_container(c: Any) -> None:
    if not isinstance(c, dict):
        return
    _drop_defaults(c, _CONTAINER_DEFAULTS)
    image = c.get("image")
    if isinstance(image, str) and c.get("imagePullPolicy") == default_pull_policy(image):
        del c["imagePullPolicy"]
    for port in c.get("ports") or []:
        if isinstance(port, dict) and port.get("protocol") == "TCP":
            del port["protocol"]
    for probe in PROBES:
        _normalize_probe(c.get(probe))
    for var in c.get("env") or []:
        ref = ((var.get("valueFrom") or {}).get("fieldRef") or {}) if isinstance(var, dict) else {}
        if ref.get("apiVersion") == "v1":
            del ref["apiVersion"]


def normalize(template: dict[str, Any] | None) -> dict[str, Any]:
    """The template without the operator's labels and the API server's defaults (a new dict)."""
    out: dict[str, Any] = _strip_none(copy.deepcopy(template or {}))
    meta = out.get("metadata")
    if isinstance(meta, dict):
        meta.pop("creationTimestamp", None)
        labels = meta.get("labels")
        if isinstance(labels, dict):
            for key in OPERATOR_LABELS:
                labels.pop(key, None)
            if not labels:
                del meta["labels"]
        if not meta.get("annotations"):
            meta.pop("annotations", None)
        if not meta:
            del out["metadata"]
    spec = out.get("spec")
    if isinstance(spec, dict):
        _drop_defaults(spec, _POD_DEFAULTS)
        for key in CONTAINER_LISTS:
            for c in spec.get(key) or []:
                _normalize_container(c)
        for vol in spec.get("volumes") or []:
            for kind in ("configMap", "secret"):
                src = vol.get(kind) if isinstance(vol, dict) else None
                if isinstance(src, dict) and src.get("defaultMode") == 420:
                    del src["defaultMode"]
    return out


# ---------------------------------------------------------------- structured diff


@dataclass(frozen=True)
class Change:
    """One difference. `path` is readable (`spec.containers[app].env[LOG_LEVEL].value`); `segments`
    is the same path as data (dict keys, and `[key]` for list items matched by name or index)."""

    segments: tuple[str, ...]
    kind: ChangeKind
    old: Any = None
    new: Any = None

    @property
    def path(self) -> str:
        out = ""
        for seg in self.segments:
            if seg.startswith("["):
                out += seg
            elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", seg):
                out += f".{seg}" if out else seg
            else:
                out += f"[{json.dumps(seg)}]"
        return out

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "old": self.old, "new": self.new}


def _list_key(field_name: str, items: list[Any]) -> str | None:
    """The field that identifies each item of this list, or None to compare by position."""
    if not items or not all(isinstance(i, dict) for i in items):
        return None
    for key in ("name", *_LIST_KEYS.get(field_name, ())):
        values = [i.get(key) for i in items]
        if all(v is not None for v in values):
            return key
    return None


def _unique(items: list[Any], key: str) -> bool:
    values = [str(i[key]) for i in items]
    return len(values) == len(set(values))


def _diff(old: Any, new: Any, path: tuple[str, ...], out: list[Change]) -> None:
    if old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            sub = (*path, str(key))
            if key not in new:
                if _keyed_list(key, old[key]):
                    _diff(old[key], type(old[key])(), sub, out)
                else:
                    out.append(Change(sub, "removed", old[key], None))
            elif key not in old:
                if _keyed_list(key, new[key]):
                    _diff(type(new[key])(), new[key], sub, out)
                else:
                    out.append(Change(sub, "added", None, new[key]))
            else:
                _diff(old[key], new[key], sub, out)
        return
    if isinstance(old, list) and isinstance(new, list):
        field_name = path[-1] if path else ""
        key = _list_key(field_name, [*old, *new])
        if key is not None and _unique(old, key) and _unique(new, key):
            before = {str(i[key]): i for i in old}
            after = {str(i[key]): i for i in new}
            for k in [*before, *(k for k in after if k not in before)]:
                sub = (*path, f"[{k}]")
                if k not in after:
                    out.append(Change(sub, "removed", before[k], None))
                elif k not in before:
                    out.append(Change(sub, "added", None, after[k]))
                else:
                    _diff(before[k], after[k], sub, out)
            return
        if all(isinstance(i, dict) for i in [*old, *new]) and old and new:
            for i in range(max(len(old), len(new))):
                sub = (*path, f"[{i}]")
                if i >= len(new):
                    out.append(Change(sub, "removed", old[i], None))
                elif i >= len(old):
                    out.append(Change(sub, "added", None, new[i]))
                else:
                    _diff(old[i], new[i], sub, out)
            return
    # Scalars, lists of scalars (command, args) and type changes: one change with both values.
    out.append(Change(path, "changed", old, new))


def _keyed_list(field_name: Any, value: Any) -> bool:
    """A list matched by key, or a map of names: when one side lacks it, diffed item by item."""
    if isinstance(value, dict):
        return str(field_name) in _MAPS
    if not isinstance(value, list):
        return False
    key = _list_key(str(field_name), value)
    return key is not None and _unique(value, key)


def diff_templates(stable: dict[str, Any] | None, canary: dict[str, Any] | None) -> list[Change]:
    """Every difference from the stable to the canary pod template, after `normalize`."""
    out: list[Change] = []
    _diff(normalize(stable), normalize(canary), (), out)
    return out


# ---------------------------------------------------------------- one-line summary


def _image_parts(image: str) -> tuple[str, str, str]:
    """(repository, separator, tag or digest): `reg:5000/shop/app:2` -> ('reg:5000/shop/app', ':', '2')."""
    if "@" in image:
        repo, digest = image.split("@", 1)
        return repo, "@", digest
    head, _, last = image.rpartition("/")
    if ":" in last:
        name, tag = last.split(":", 1)
        return (f"{head}/{name}" if head else name), ":", tag
    return image, "", ""


def image_change(old: str, new: str) -> str:
    """`checkout:2.4.1 → 2.5.0` for a new tag of the same image, else both images in full."""
    old_repo, old_sep, old_tag = _image_parts(old)
    new_repo, new_sep, new_tag = _image_parts(new)
    if old_repo == new_repo and old_sep == new_sep and old_tag and new_tag:
        return f"{old_repo.rsplit('/', 1)[-1]}{old_sep}{old_tag} → {new_tag}"
    return f"{old} → {new}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass
class _Tally:
    images: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    counted: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # (what, how) -> ids
    flags: list[str] = field(default_factory=list)
    other: int = 0

    def count(self, what: str, how: str, ident: str) -> None:
        self.counted.setdefault((what, how), set()).add(ident)

    def flag(self, text: str) -> None:
        if text not in self.flags:
            self.flags.append(text)


def _classify(change: Change, tally: _Tally, many_containers: bool) -> None:
    seg = change.segments
    if len(seg) >= 2 and seg[0] == "metadata" and seg[1] in ("annotations", "labels"):
        what = "pod annotation" if seg[1] == "annotations" else "pod label"
        tally.count(what, change.kind, seg[2] if len(seg) > 2 else "")
        return
    if len(seg) >= 3 and seg[0] == "spec" and seg[1] in CONTAINER_LISTS:
        cname = seg[2].strip("[]")
        label = "init container" if seg[1] == "initContainers" else "container"
        if len(seg) == 3:
            tally.containers.append(f"{label} {cname} {change.kind}")
            return
        attr = seg[3]
        suffix = f" ({cname})" if many_containers or seg[1] != "containers" else ""
        if attr == "image" and len(seg) == 4:
            if change.kind == "changed" and isinstance(change.old, str) and isinstance(change.new, str):
                tally.images.append(f"image {image_change(change.old, change.new)}{suffix}")
            else:
                tally.images.append(f"image {change.kind}{suffix}")
            return
        if attr == "env" and len(seg) >= 5:
            how = change.kind if len(seg) == 5 else "changed"
            tally.count("env var", how, f"{cname}/{seg[4]}")
            return
        if attr == "env":
            tally.flag("env changed")
            return
        flags = {"envFrom": "env sources changed", "resources": "resources changed",
                 "command": "command changed", "args": "args changed", "ports": "ports changed",
                 "volumeMounts": "volume mounts changed", "securityContext": "container security changed"}
        if attr in PROBES:
            tally.flag(f"{attr.removesuffix('Probe')} probe {change.kind}")
        elif attr in flags:
            tally.flag(flags[attr])
        else:
            tally.other += 1
        return
    if len(seg) >= 2 and seg[0] == "spec" and seg[1] in ("volumes", "serviceAccountName", "securityContext"):
        tally.flag({"volumes": "volumes changed", "serviceAccountName": "service account changed",
                    "securityContext": "pod security changed"}[seg[1]])
        return
    tally.other += 1


def summarize(changes: list[Change], canary: dict[str, Any] | None = None) -> str:
    """One line: `image checkout:2.4.1 → 2.5.0, 1 env var changed`; NO_CHANGE when there is none."""
    if not changes:
        return NO_CHANGE
    containers = ((canary or {}).get("spec") or {}).get("containers") or []
    tally = _Tally()
    for change in changes:
        _classify(change, tally, len(containers) > 1)
    parts = [*tally.images, *tally.containers]
    counted = sorted(tally.counted.items(), key=lambda kv: (_COUNTED_ORDER.index(kv[0][0]), kv[0][1]))
    for (what, how), idents in counted:
        parts.append(f"{_plural(len(idents), what)} {how}")
    parts.extend(tally.flags)
    if tally.other:
        parts.append(_plural(tally.other, "other change"))
    return ", ".join(parts)


# ---------------------------------------------------------------- the report for one Rollout


@dataclass(frozen=True)
class ChangeReport:
    """Stable → canary for one Rollout, with who asked for it and why."""

    namespace: str
    name: str
    stable_revision: str | None
    canary_revision: str | None
    stable_found: bool
    author: str | None
    change_author: str | None
    change_record: str | None
    changes: tuple[Change, ...]
    summary: str

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "stableRevision": self.stable_revision,
            "canaryRevision": self.canary_revision,
            "stableFound": self.stable_found,
            "author": self.author,
            "changeAuthor": self.change_author,
            "changeRecord": self.change_record,
            "summary": self.summary,
            "changes": [c.to_json() for c in self.changes],
        }


def stable_template(deployment: dict[str, Any] | None) -> dict[str, Any] | None:
    if not deployment:
        return None
    template = (deployment.get("spec") or {}).get("template")
    return template if isinstance(template, dict) else None


def change_report(rollout: dict[str, Any], stable_deployment: dict[str, Any] | None) -> ChangeReport:
    """The diff from what `<name>-stable` runs to the Rollout's spec.template."""
    meta = rollout.get("metadata") or {}
    ann = dict(meta.get("annotations") or {})
    st = rollout.get("status") or {}
    canary = (rollout.get("spec") or {}).get("template")
    canary = canary if isinstance(canary, dict) else None
    stable = stable_template(stable_deployment)
    if stable is not None:
        labels = (stable.get("metadata") or {}).get("labels") or {}
        stable_rev = labels.get(names.LABEL_REVISION) or st.get("stableRevision")
        changes = diff_templates(stable, canary)
        summary = summarize(changes, canary)
    else:
        stable_rev = st.get("stableRevision")
        changes = diff_templates({}, canary)
        summary = "no stable Deployment yet: the whole template is new (a first revision goes straight to stable)"
    return ChangeReport(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        stable_revision=str(stable_rev) if stable_rev else None,
        canary_revision=revision_of(canary) if canary is not None else None,
        stable_found=stable is not None,
        author=ann.get(names.ANN_AUTHOR),
        change_author=ann.get(names.ANN_CHANGE_AUTHOR),
        change_record=ann.get(ANN_CHANGE_RECORD),
        changes=tuple(changes),
        summary=summary,
    )


def render_value(value: Any, limit: int = 300) -> str:
    """A compact one-line rendering of a template value (scalars bare, the rest as JSON)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"

