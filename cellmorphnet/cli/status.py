"""Show what is in the cache: each dataset, fetched or not, verified or not, prepared at which sizes."""

from __future__ import annotations

import typer

from cellmorphnet.cli import _output
from cellmorphnet.cli._options import JsonFlag, home_of

NAME = "status"


def command(ctx: typer.Context, json: JsonFlag = False) -> None:
    from rich.table import Table

    from cellmorphnet.cache import cache_status

    data = {"cache": cache_status(home_of(ctx))}
    if json:
        _output.print_json(data)
        return
    cache = data["cache"]
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
        prepared = (
            "; ".join(
                f"{size} px: "
                + " / ".join(f"{n:,}" for n in p["counts"].values())
                + ("" if p["verified"] else " [yellow](unverified)[/yellow]")
                for size, p in d["prepared"].items()
            )
            or "—"
        )
        table.add_row(d["name"], fetched, verified, prepared)
    _output.out.print(table)
