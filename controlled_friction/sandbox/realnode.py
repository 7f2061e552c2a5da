"""One real node next to the kwok nodes: kubelet + containerd 2.x + Debian's runc and CNI plugins.

`up()` (from `sandbox up --real-node`) builds what is missing (`nodebuild`, `image`), then starts
containerd and a kubelet registered with the sandbox API server as ``cf-real-node``, and imports the
operator image and a pause image into containerd: nothing is ever pulled. kwok keeps the fake nodes
for cheap pods; the real node carries the label and NoSchedule taint `REAL_NODE_LABEL` =
``true``, so only pods that select and tolerate it run there.

Networking stays on this machine: a Linux bridge (`bridge_name()`) with its own /24
(`subnet()`), one veth per pod (CNI ``bridge`` + ``host-local``), routes only to that subnet and to
the Service range, and no forwarding off the bridge. Pods reach each other over the bridge; the API
server reaches pods directly (webhooks, through the Service's EndpointSlices: aggregator routing, as
for the rest of the sandbox; there is no kube-proxy). Pods reach the API server through the
`kubernetes` Service address (10.96.0.1:443, what in-cluster clients use), and Prometheus and the
simulator at the bridge's address (`host_url`), by DNAT to 127.0.0.1 (``route_localnet`` on the
bridge only).

Needs root, cgroup v1 or v2 (this machine: v1 hybrid, so the kubelet runs with ``failCgroupV1: false``
and the cgroupfs driver; there is no systemd), and the Debian packages `nodebuild.host_tools_missing`
lists. The kubelet changes three kernel settings it insists on (vm.overcommit_memory, kernel.panic,
kernel.panic_on_oops); `down()` puts back the values it found.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlled_friction import certs
from controlled_friction.sandbox import image, layout, nodebuild
from controlled_friction.sandbox.build import binary as cp_binary
from controlled_friction.sandbox.layout import HOST, SERVICE_IP, Paths
from controlled_friction.sandbox.procs import ProcRecord, exited_early, is_ours, spawn, terminate

NODE_NAME = "cf-real-node"
REAL_NODE_LABEL = "sandbox.controlled-friction.io/real-node"
NAMES = ("containerd", "kubelet")
NODE_READY_TIMEOUT = 120.0
KERNEL_SETTINGS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")
CGROUP_HIERARCHIES = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd")
HOST_PORTS = ("prometheus", "simulator")  # reachable from pods at the bridge address


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[sandbox] {msg}", file=sys.stderr, flush=True)


# --- names and addresses (all derived from the port base, so two sandboxes do not clash) ----------


def bridge_name() -> str:
    return f"cfrn{layout.port_base()}"


def subnet() -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"10.245.{(layout.port_base() // 20) % 250}.0/24")


def gateway() -> str:
    return str(subnet().network_address + 1)


def host_url(component: str) -> str:
    """How a pod on the real node reaches a sandbox component listening on 127.0.0.1."""
    if component not in HOST_PORTS:
        raise ValueError(f"{component} is not exposed to pods; exposed: {', '.join(HOST_PORTS)}")
    return f"http://{gateway()}:{layout.port(component)}"


def _chain() -> str:
    return f"CF-RN-{layout.port_base()}"


def _cgroup_root() -> str:
    return f"/cf-sandbox-{layout.port_base()}"


class NodePaths:
    def __init__(self, p: Paths) -> None:
        self.p = p
        self.root = p.root / "realnode"
        self.containerd_root = self.root / "containerd" / "root"
        self.containerd_state = self.root / "containerd" / "state"
        self.containerd_config = self.root / "containerd" / "config.toml"
        self.socket = self.root / "containerd" / "containerd.sock"
        self.kubelet_root = self.root / "kubelet"
        self.kubelet_config = self.root / "kubelet-config.yaml"
        self.kubelet_kubeconfig = self.root / "kubelet.kubeconfig"
        self.kubelet_cert = self.root / "pki" / "kubelet-client.crt"
        self.kubelet_key = self.root / "pki" / "kubelet-client.key"
        self.cni_conf = self.root / "cni" / "net.d"
        self.saved_sysctls = self.root / "sysctls.json"
        self.imported = self.root / "imported.json"


# --- configuration files -------------------------------------------------------------------------


def containerd_config(n: NodePaths) -> str:
    cri_rt = '[plugins."io.containerd.cri.v1.runtime"]'
    return f"""version = 3
root = "{n.containerd_root}"
state = "{n.containerd_state}"
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "{n.socket}"

[ttrpc]
  address = "{n.socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{n.root / 'containerd' / 'opt'}"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{image.PAUSE_REF}"

{cri_rt}
  netns_mounts_under_state_dir = true
  # This machine withholds CAP_SYS_RESOURCE even from root: no oom_score_adj below our own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{nodebuild.runc_path()}"
        Root = "{n.containerd_state / 'runc'}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{n.cni_conf}"
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "{HOST}"
  stream_server_port = "0"
"""


def cni_config(n: NodePaths) -> str:
    net = subnet()
    doc = {
        "cniVersion": "1.0.0",
        "name": f"cf-sandbox-{layout.port_base()}",
        "plugins": [{
            "type": "bridge",
            "bridge": bridge_name(),
            "isGateway": True,
            "ipMasq": False,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "dataDir": str(n.root / "cni" / "ipam"),
                "ranges": [[{"subnet": str(net), "gateway": gateway()}]],
                # No default route: pods reach their subnet and the Service range, nothing else.
                "routes": [{"dst": layout.SERVICE_CIDR}],
            },
        }],
    }
    return json.dumps(doc, indent=2)


def kubelet_config(n: NodePaths) -> str:
    doc = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": gateway(),
        "port": layout.port("kubelet"),
        "readOnlyPort": 0,
        "healthzBindAddress": HOST,
        "healthzPort": layout.port("kubelet_healthz"),
        # The API server has no kubelet client certificate here; the server listens on the bridge only.
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": _cgroup_root(),
        "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{n.socket}",
        "failSwapOn": False,
        # The images are imported, not pullable: never garbage-collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "registerWithTaints": [{"key": REAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"}],
        "resolvConf": "/etc/resolv.conf",
        "maxPods": 30,
        "serializeImagePulls": False,
        "syncFrequency": "10s",
        # Container logs stay in the state directory (read them there: `kubectl logs` would make the
        # API server resolve the node's name, which no DNS here knows).
        "podLogsDir": str(n.root / "pod-logs"),
    }
    return json.dumps(doc, indent=2)


def _kubeconfig(n: NodePaths) -> str:
    server = f"https://{HOST}:{layout.port('apiserver')}"
    return json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "sandbox", "cluster": {"server": server,
                                                     "certificate-authority": str(n.p.ca_cert)}}],
        "users": [{"name": NODE_NAME, "user": {"client-certificate": str(n.kubelet_cert),
                                               "client-key": str(n.kubelet_key)}}],
        "contexts": [{"name": "sandbox", "context": {"cluster": "sandbox", "user": NODE_NAME}}],
        "current-context": "sandbox",
    }, indent=2)


def _ensure_client_cert(n: NodePaths) -> None:
    """The kubelet's identity: system:node:<name> in system:nodes, signed by the sandbox CA."""
    if n.kubelet_cert.exists() and n.kubelet_key.exists():
        return
    loaded = serialization.load_pem_private_key(n.p.ca_key.read_bytes(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(n.p.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{NODE_NAME}")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(loaded, hashes.SHA256())
    )
    n.kubelet_key.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(n.kubelet_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(certs.key_pem(key))
    n.kubelet_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


# --- host setup: bridge, NAT, cgroups, kernel settings -------------------------------------------


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _setup_network() -> None:
    br = bridge_name()
    if _run("ip", "link", "show", br, check=False).returncode != 0:
        _run("ip", "link", "add", "name", br, "type", "bridge")
    _run("ip", "addr", "replace", f"{gateway()}/{subnet().prefixlen}", "dev", br)
    _run("ip", "link", "set", br, "up")
    Path(f"/proc/sys/net/ipv4/conf/{br}/route_localnet").write_text("1")
    chain = _chain()
    _teardown_iptables()
    _run("iptables", "-t", "nat", "-N", chain)
    _run("iptables", "-t", "nat", "-A", chain, "-d", SERVICE_IP, "-p", "tcp", "--dport", "443",
         "-j", "DNAT", "--to-destination", f"{HOST}:{layout.port('apiserver')}")
    for name in HOST_PORTS:
        _run("iptables", "-t", "nat", "-A", chain, "-d", gateway(), "-p", "tcp", "--dport", str(layout.port(name)),
             "-j", "DNAT", "--to-destination", f"{HOST}:{layout.port(name)}")
    _run("iptables", "-t", "nat", "-I", "PREROUTING", "-i", br, "-j", chain)
    # Pods talk to each other and to this host, never beyond it.
    _run("iptables", "-N", chain)
    _run("iptables", "-A", chain, "-i", br, "!", "-o", br, "-j", "DROP")
    _run("iptables", "-I", "FORWARD", "-j", chain)


def _teardown_iptables() -> None:
    chain, br = _chain(), bridge_name()
    while _run("iptables", "-t", "nat", "-D", "PREROUTING", "-i", br, "-j", chain, check=False).returncode == 0:
        pass
    while _run("iptables", "-D", "FORWARD", "-j", chain, check=False).returncode == 0:
        pass
    for table in ("nat", "filter"):
        _run("iptables", "-t", table, "-F", chain, check=False)
        _run("iptables", "-t", table, "-X", chain, check=False)


def _setup_cgroups() -> None:
    """The kubelet's --cgroup-root must exist in every v1 hierarchy (cpuset needs cpus/mems set)."""
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():
        return  # cgroup v2: the kubelet creates what it needs
    for h in CGROUP_HIERARCHIES:
        d = base / h / _cgroup_root().lstrip("/")
        if not (base / h).is_dir():
            continue
        d.mkdir(exist_ok=True)
        if h == "cpuset":
            for f in ("cpuset.cpus", "cpuset.mems"):
                if not (d / f).read_text().strip():
                    (d / f).write_text((base / h / f).read_text())


def _remove_kubelet_iptables() -> None:
    """The chains the kubelet adds on start (canaries, the localnet firewall): ours to undo."""
    owned = {"filter": ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY"),
             "mangle": ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"), "nat": ("KUBE-KUBELET-CANARY",)}
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for builtin in ("INPUT", "OUTPUT"):
            while _run(tool, "-D", builtin, "-j", "KUBE-FIREWALL", check=False).returncode == 0:
                pass
        for table, chains in owned.items():
            for chain in chains:
                _run(tool, "-t", table, "-F", chain, check=False)
                _run(tool, "-t", table, "-X", chain, check=False)


def _remove_cgroups() -> None:
    base = Path("/sys/fs/cgroup")
    for h in (*CGROUP_HIERARCHIES, "unified"):
        top = base / h / _cgroup_root().lstrip("/")
        if not top.is_dir():
            continue
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def _save_sysctls(n: NodePaths) -> None:
    if n.saved_sysctls.exists():
        return
    values = {k: Path(f"/proc/sys/{k}").read_text().strip() for k in KERNEL_SETTINGS}
    n.saved_sysctls.write_text(json.dumps(values))


def _restore_sysctls(n: NodePaths) -> None:
    try:
        values = json.loads(n.saved_sysctls.read_text())
    except (OSError, ValueError):
        return
    for key, value in values.items():
        with contextlib.suppress(OSError):
            Path(f"/proc/sys/{key}").write_text(value)


def _unmount_under(root: Path) -> None:
    """Unmount everything below `root` (pod volumes, netns, overlay snapshots), deepest first."""
    prefix = str(root.resolve()) + "/"
    for _ in range(5):
        mounts = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                mounts.append(point)
        if not mounts:
            return
        for point in sorted(set(mounts), key=len, reverse=True):
            if _run("umount", point, check=False).returncode != 0:
                _run("umount", "-l", point, check=False)


# --- processes -----------------------------------------------------------------------------------


def _record(name: str, p: Paths) -> ProcRecord | None:
    rec = ProcRecord.load(p.pid_file(name))
    return rec if rec is not None and is_ours(rec) else None


def _ctr(n: NodePaths, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(nodebuild.binary("ctr")), "--address", str(n.socket), "-n", "k8s.io", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ctr {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _containerd_healthy(n: NodePaths) -> bool:
    if not n.socket.exists():
        return False
    try:
        return _ctr(n, "version", check=False, timeout=5).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _kubelet_healthy() -> bool:
    try:
        url = f"http://{HOST}:{layout.port('kubelet_healthz')}/healthz"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _wait(what: str, ok: Callable[[], bool], rec: ProcRecord, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if not is_ours(rec):
            raise RuntimeError(f"{what} exited (code {exited_early(rec)}); see {log}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not healthy after {timeout:.0f}s; see {log}")
        time.sleep(0.25)


def _start_containerd(n: NodePaths, quiet: bool) -> None:
    p = n.p
    if _record("containerd", p) is not None and _containerd_healthy(n):
        return
    for d in (n.containerd_root, n.containerd_state, n.cni_conf):
        d.mkdir(parents=True, exist_ok=True)
    n.containerd_config.write_text(containerd_config(n))
    (n.cni_conf / "10-cf-sandbox.conflist").write_text(cni_config(n))
    env = {"PATH": f"{nodebuild.bin_dir()}:/usr/sbin:/usr/bin:/sbin:/bin"}
    _say(f"starting containerd (log: {p.log_file('containerd')})", quiet)
    rec = spawn([str(nodebuild.binary("containerd")), "--config", str(n.containerd_config)],
                p.log_file("containerd"), p.pid_file("containerd"), env=env)
    _wait("containerd", lambda: _containerd_healthy(n), rec, p.log_file("containerd"), 60)


def _import_images(n: NodePaths, quiet: bool) -> None:
    t0 = time.monotonic()
    pause = image.ensure_pause_image(nodebuild.binary("pause"))
    operator = image.ensure_operator_image()
    try:
        done = json.loads(n.imported.read_text())
    except (OSError, ValueError):
        done = {}
    present = set(_ctr(n, "images", "ls", "-q").stdout.split())
    for built in (pause, operator):
        st = built.archive.stat()
        stamp = f"{built.archive.name}:{st.st_size}:{st.st_mtime_ns}"
        if done.get(built.ref) == stamp and built.ref in present:
            continue
        _say(f"importing {built.ref} into containerd", quiet)
        _ctr(n, "images", "import", str(built.archive))
        done[built.ref] = stamp
    n.imported.write_text(json.dumps(done))
    _say(f"images ready ({time.monotonic() - t0:.0f}s)", quiet)


def _start_kubelet(n: NodePaths, quiet: bool) -> None:
    p = n.p
    if _record("kubelet", p) is not None and _kubelet_healthy():
        return
    _ensure_client_cert(n)
    n.kubelet_kubeconfig.write_text(_kubeconfig(n))
    n.kubelet_config.write_text(kubelet_config(n))
    n.kubelet_root.mkdir(parents=True, exist_ok=True)
    _save_sysctls(n)
    argv = [
        str(nodebuild.binary("kubelet")),
        f"--config={n.kubelet_config}",
        f"--kubeconfig={n.kubelet_kubeconfig}",
        f"--root-dir={n.kubelet_root}",
        f"--cert-dir={n.root / 'pki'}",
        f"--hostname-override={NODE_NAME}",
        f"--node-ip={gateway()}",
        f"--node-labels={REAL_NODE_LABEL}=true",
        "--v=1",
    ]
    _say(f"starting kubelet {NODE_NAME} (log: {p.log_file('kubelet')})", quiet)
    env = {"PATH": f"{nodebuild.bin_dir()}:/usr/sbin:/usr/bin:/sbin:/bin"}
    rec = spawn(argv, p.log_file("kubelet"), p.pid_file("kubelet"), env=env)
    _wait("kubelet", _kubelet_healthy, rec, p.log_file("kubelet"), 90)


def _kubectl(p: Paths, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(cp_binary("kubectl")), f"--kubeconfig={p.admin_kubeconfig}", *args],
                          capture_output=True, text=True, timeout=60, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def node_ready(p: Paths) -> bool:
    proc = _kubectl(p, "get", "node", NODE_NAME, "-o", "json", check=False)
    if proc.returncode != 0:
        return False
    node = json.loads(proc.stdout)
    conds = node.get("status", {}).get("conditions", [])
    taints = [t.get("key") for t in node.get("spec", {}).get("taints", [])]
    # Only our own taint may remain (the lifecycle controller lifts not-ready a moment after Ready).
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds) and taints == [REAL_NODE_LABEL]


# --- public API ----------------------------------------------------------------------------------


def ensure_prerequisites(quiet: bool = False) -> None:
    if os.geteuid() != 0:
        raise RuntimeError("the real node needs root (kubelet, containerd, network setup)")
    missing = nodebuild.host_tools_missing()
    if missing:
        raise RuntimeError(f"missing Debian packages for the real node: apt-get install {' '.join(missing)}")
    if nodebuild.missing():
        t0 = time.monotonic()
        _say("building kubelet, containerd and pause (the first build takes minutes)", quiet)
        nodebuild.ensure_built()
        _say(f"real-node binaries ready ({time.monotonic() - t0:.0f}s)", quiet)


def up(p: Paths, quiet: bool = False) -> None:
    """Start the real node (idempotent); the control plane must be up."""
    ensure_prerequisites(quiet)
    n = NodePaths(p)
    n.root.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    _setup_network()
    _setup_cgroups()
    _start_containerd(n, quiet)
    _import_images(n, quiet)
    _start_kubelet(n, quiet)
    deadline = time.monotonic() + NODE_READY_TIMEOUT
    while not node_ready(p):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{NODE_NAME} not Ready after {NODE_READY_TIMEOUT:.0f}s; see {p.log_file('kubelet')}")
        time.sleep(0.5)
    _say(f"real node {NODE_NAME} ready ({time.monotonic() - t0:.1f}s; pods on {subnet()})", quiet)


def status(p: Paths) -> dict[str, dict[str, object]]:
    """containerd and the kubelet, in the shape of `cluster.status` (containerd has a socket, no port)."""
    n = NodePaths(p)
    healthz = layout.port("kubelet_healthz")
    checks: dict[str, tuple[Callable[[], bool], str, int | None, str | None]] = {
        "containerd": (lambda: _containerd_healthy(n), str(n.socket), None, None),
        "kubelet": (_kubelet_healthy, f"{HOST}:{healthz}", healthz, f"http://{HOST}:{healthz}/healthz"),
    }
    out: dict[str, dict[str, object]] = {}
    for name, (healthy, address, port, url) in checks.items():
        rec = _record(name, p)
        out[name] = {"pid": rec.pid if rec else None, "running": rec is not None,
                     "healthy": rec is not None and healthy(), "address": address, "port": port, "url": url,
                     "log": str(p.log_file(name))}
    return out


def running(p: Paths) -> bool:
    return any(ProcRecord.load(p.pid_file(name)) is not None for name in NAMES) or NodePaths(p).root.exists()


def _our_shims(n: NodePaths) -> list[int]:
    """PIDs of containerd shims started for our containerd (their argv names our socket)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(n.socket).encode() in argv:
            pids.append(int(d.name))
    return pids


def down(p: Paths, quiet: bool = False, api_up: bool = True) -> None:
    """Stop the pods, kubelet and containerd we started; undo the host setup. Safe to repeat."""
    n = NodePaths(p)
    if not running(p):
        return
    kubelet = _record("kubelet", p)
    if api_up and kubelet is not None:
        # Let the kubelet stop its pods (CNI DEL, volume unmounts) while it still can.
        _kubectl(p, "delete", "pods", "--all-namespaces", f"--field-selector=spec.nodeName={NODE_NAME}",
                 "--grace-period=5", "--wait=false", check=False)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and _containerd_healthy(n) and _ctr(
                n, "tasks", "ls", "-q", check=False).stdout.split():
            time.sleep(1)
    for name in ("kubelet",):
        rec = ProcRecord.load(p.pid_file(name))
        if rec is not None and terminate(rec):
            _say(f"stopped {name} (pid {rec.pid})", quiet)
        p.pid_file(name).unlink(missing_ok=True)
    if _containerd_healthy(n):
        for task in _ctr(n, "tasks", "ls", "-q", check=False).stdout.split():
            _ctr(n, "tasks", "kill", "-s", "SIGKILL", task, check=False)
        time.sleep(1)
        for task in _ctr(n, "tasks", "ls", "-q", check=False).stdout.split():
            _ctr(n, "tasks", "delete", "-f", task, check=False)
    rec = ProcRecord.load(p.pid_file("containerd"))
    if rec is not None and terminate(rec):
        _say(f"stopped containerd (pid {rec.pid})", quiet)
    p.pid_file("containerd").unlink(missing_ok=True)
    for pid in _our_shims(n):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    _unmount_under(n.root)
    _teardown_iptables()
    _remove_kubelet_iptables()
    _run("ip", "link", "del", bridge_name(), check=False)
    _remove_cgroups()
    _restore_sysctls(n)
    shutil.rmtree(n.root, ignore_errors=True)
    _say(f"real node {NODE_NAME} removed", quiet)
