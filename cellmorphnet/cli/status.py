"""Show how a run is going (the latest by default) and what is in the cache.

Works while another process is training: the run's heartbeat says whether it is alive. --watch
refreshes until the run ends.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from cellmorphnet.cli._options import JsonFlag, LatestRunArg, home_of
from cellmorphnet.cli.output import output

NAME = "status"
SPARKS = "▁▂▃▄▅▆▇█"
STATE_STYLE = {"running": "bold cyan", "finished": "green", "early-stopped": "green", "interrupted": "yellow"}


def sparkline(values: list[float], width: int = 40) -> str:
    """A one-line plot of ``values`` (the last ``width`` of them)."""
    vals = [v for v in values if v is not None][-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    return "".join(SPARKS[min(len(SPARKS) - 1, int((v - lo) / span * (len(SPARKS) - 1) + 0.5))] for v in vals)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.1%}"


def run_renderable(st: dict[str, Any]):
    from rich.console import Group
    from rich.table import Table

    style = STATE_STYLE.get(st["state"], "red")
    head = Table.grid(padding=(0, 2))
    head.add_column(style="dim")
    head.add_column()
    state = f"[{style}]{st['state']}[/{style}]" + (f" ({st['reason']})" if st.get("reason") else "")
    head.add_row("run", f"[bold]{st['name']}[/bold]  {st['run']}")
    head.add_row("state", state)
    head.add_row("datasets", ", ".join(st["datasets"]) + (f" on {st['device']}" if st.get("device") else ""))
    if st.get("world_size", 1) > 1 or (st.get("started_with") or 1) > 1:
        first = st.get("started_with") or 1
        head.add_row("processes", f"{st['world_size']}" + (" (torchrun)" if st["world_size"] > 1 else "") +
                     (f"; it started with {first}" if first != st["world_size"] else ""))  # fmt: skip
    if st.get("parent"):
        p = st["parent"]
        head.add_row("adapted from", f"{p['name']} (epoch {p.get('epoch')}, checkpoint sha256 "
                     f"{str(p.get('checkpoint_sha256', ''))[:12]}…)")  # fmt: skip
    if st.get("reviewed_cells"):  # adapted on: a type with fewer than 20 gains from more (docs/training.md)
        cells = st["reviewed_cells"]
        head.add_row("adapted on", f"{sum(cells.values())} reviewed cells: "
                     + ", ".join(f"{c} {n}" for c, n in cells.items()))  # fmt: skip
    epochs = f"{st['epochs_done']} of {st['epochs_planned']}"
    if st["state"] == "running" and st.get("batches"):
        epochs += f" (epoch {st['current_epoch'] + 1}: batch {st['batch']}/{st['batches']})"
    head.add_row("epochs", epochs)
    best = "—" if st["best_val_f1"] is None else f"{st['best_val_f1']:.4f} (epoch {st['best_epoch']})"
    head.add_row("best val macro-F1", best + ("" if st["best_val_f1"] is None else " (as training measures it: one "
                                              "view; eval averages 8)"))
    head.add_row("train / val accuracy", f"{_pct(st['train_acc'])} / {_pct(st['val_acc'])}")
    head.add_row("last epoch", output.duration(st["last_epoch_time"]))
    if st["state"] == "running":
        head.add_row("time left", output.duration(st["eta_seconds"]))
    curves = st["curves"]
    for key, label in (("train_loss", "train loss"), ("val_loss", "val loss"), ("val_f1", "val F1")):
        values = [v for v in curves.get(key) or [] if v is not None]  # (an adapted run has no validation loss)
        if values:
            head.add_row(label, f"{sparkline(values)}  {values[-1]:.4f}")
    parts = [head]
    if st["per_class_f1_at_best"]:
        table = Table(title="Per-class validation F1 at the best epoch", title_justify="left")
        table.add_column("class")
        table.add_column("F1", justify="right")
        table.add_column("")
        for c, f in st["per_class_f1_at_best"].items():
            table.add_row(c, f"{f:.3f}", "█" * round(f * 20))
        parts.append(table)
    return Group(*parts)


def runs_table(rows: list[dict[str, Any]]):
    from rich.table import Table

    table = Table(title="Runs")
    for col in ("run", "state", "datasets", "epochs", "best val F1"):
        table.add_column(col)
    for st in rows:
        style = STATE_STYLE.get(st["state"], "red")
        best = "—" if st["best_val_f1"] is None else f"{st['best_val_f1']:.4f}"
        table.add_row(
            st["name"], f"[{style}]{st['state']}[/{style}]", ", ".join(st["datasets"]),
            f"{st['epochs_done']}/{st['epochs_planned']}", best,
        )  # fmt: skip
    return table


def cache_table(cache: dict[str, Any]):
    from rich.table import Table

    table = Table(title=f"Datasets in {cache['home']}")
    for col in ("dataset", "fetched", "verified", "prepared (size: train / val / test)"):
        table.add_column(col)
    for d in cache["datasets"]:
        if d["name"] == "bloodmnist" and d.get("fetched_sizes"):
            fetched = ", ".join(f"{s} px" for s in d["fetched_sizes"])
        else:
            fetched = "embedded" if d.get("note") == "embedded" else ("yes" if d["fetched"] else "no")
        if d.get("partial_downloads"):
            fetched += f" (partial download: {sum(p['bytes'] for p in d['partial_downloads']):,} bytes)"
        verified = "—" if not d["fetched"] else ("yes" if d["verified"] else "[yellow]NO[/yellow]")
        prepared = "; ".join(
            f"{size} px: " + " / ".join(f"{n:,}" for n in p["counts"].values())
            + ("" if p["verified"] else " [yellow](unverified)[/yellow]")
            for size, p in d["prepared"].items()
        ) or "—"  # fmt: skip
        table.add_row(d["name"], fetched, verified, prepared)
    return table


def command(
    ctx: typer.Context,
    run: LatestRunArg = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until the run stops.")] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between refreshes with --watch.")] = 2.0,
    as_json: JsonFlag = False,
) -> None:
    from cellmorphnet.data.cache import cache_status
    from cellmorphnet.runs import folders as runs

    home = home_of(ctx)
    all_runs = runs.list_runs(home)
    target = runs.resolve_run(run, home) if (run is not None or all_runs) else None
    if as_json:
        output.print_json(
            {
                "run": runs.read_status(target) if target else None,
                "runs": [runs.read_status(r) for r in all_runs],
                "packaged": list(runs.packaged_runs()),
                "cache": cache_status(home),
            }
        )
        return
    if watch and target is not None:
        from rich.live import Live

        with Live(run_renderable(runs.read_status(target)), console=output.out, auto_refresh=False) as live:
            while True:
                st = runs.read_status(target)
                live.update(run_renderable(st), refresh=True)
                if st["state"] != "running":
                    break
                time.sleep(interval)
        return
    if target is not None:
        output.out.print(run_renderable(runs.read_status(target)))
    if run is None:
        if len(all_runs) > 1:
            output.out.print(runs_table([runs.read_status(r) for r in all_runs[-10:]]))
        output.out.print(cache_table(cache_status(home)))
        shipped = runs.packaged_runs()
        if shipped:
            output.out.print(f"Shipped with cellmorphnet, ready to use: {', '.join(shipped)} "
                              f"(e.g. cellmorphnet infer {next(iter(shipped))} FOLDER)")  # fmt: skip
