"""`controlled-friction sandbox up|down|status|kubeconfig`: the local control plane for dev and tests."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from controlled_friction.sandbox import cluster

app = typer.Typer(help="A real local Kubernetes control plane (etcd, kube-apiserver, kwok, Prometheus).",
                  no_args_is_help=True)
_err = Console(stderr=True)


def _expected(name: str) -> bool:
    return name != "simulator" or cluster.simulator_available()


def _print_status(states: dict[str, dict[str, object]]) -> None:
    table = Table(title="controlled-friction sandbox", title_justify="left")
    for col in ("component", "pid", "address", "health"):
        table.add_column(col, no_wrap=True)
    for name, st in states.items():
        if st["healthy"]:
            health = "[green]healthy[/]"
        elif st["running"]:
            health = "[yellow]running, unhealthy[/]"
        else:
            health = "[dim]not installed[/]" if not _expected(name) else "[red]stopped[/]"
        address = str(st.get("address") or f"127.0.0.1:{st['port']}")
        table.add_row(name, str(st["pid"] or "-"), address, health)
    Console().print(table)
    Console().print(f"logs: {cluster.info().state_dir / 'logs'}")


@app.command()
def up(
    real_node: bool = typer.Option(
        False, "--real-node",
        help="Also run one real node (kubelet, containerd, runc) for pods that select and tolerate "
             "sandbox.controlled-friction.io/real-node; needs root."),
) -> None:
    """Build the binaries if needed, start every component and wait until each is healthy."""
    try:
        info = cluster.up(real_node=real_node)
    except (RuntimeError, TimeoutError) as exc:
        _err.print(f"[red]sandbox up failed:[/] {exc}", markup=True, highlight=False)
        _err.print("Fix the cause and run `up` again, or `down` to start from scratch.")
        raise typer.Exit(1) from exc
    _print_status(cluster.status())
    _err.print(f"export KUBECONFIG={info.admin_kubeconfig}")
    _err.print(f"export CF_PROMETHEUS_URL={info.prometheus_url}")


@app.command()
def down() -> None:
    """Stop the processes the sandbox started (by PID) and delete its state directory."""
    cluster.down()


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Each component's pid, port and health. Exit code 1 if anything expected is not healthy."""
    states = cluster.status()
    if as_json:
        typer.echo(json.dumps(states, indent=2))
    else:
        _print_status(states)
    if not all(st["healthy"] for name, st in states.items() if _expected(name)):
        raise typer.Exit(1)


@app.command()
def kubeconfig(
    user: str = typer.Option(..., "--user", "-u",
                             help="alice, bob, carol, dave, mallory, admin or operator."),
    path_only: bool = typer.Option(False, "--path", help="Print the file's path instead of its content."),
) -> None:
    """Print a kubeconfig that acts as USER (written to the state directory as well)."""
    try:
        path = cluster.kubeconfig_path(user)
    except (ValueError, RuntimeError) as exc:
        _err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    typer.echo(str(path) if path_only else path.read_text(), nl=path_only)
