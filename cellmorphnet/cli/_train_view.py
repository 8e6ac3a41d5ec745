"""How training looks in a terminal: a rich progress bar per epoch and a one-line row per epoch.

Without a terminal, plain lines. This only renders the events that ``training.fit.fit`` emits.
"""

from __future__ import annotations

from typing import Any

from cellmorphnet.cli.output import output


class TrainView:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = output.err
        self.tty = self.console.is_terminal
        self.progress = None
        self.task = None
        self.epochs = 0
        self.epoch_times: list[float] = []

    def event(self, kind: str, **data: Any) -> None:
        if self.quiet:
            return
        getattr(self, f"_on_{kind}")(**data)

    def _on_start(self, run_dir, record, device, precision, start_epoch, epochs, resumed) -> None:
        self.epochs = epochs
        what = "Resuming" if resumed else "Training"
        classes = ", ".join(record.classes)
        self.console.print(
            f"{what} [bold]{run_dir.name}[/bold] on {device} ({precision} precision), "
            f"{record.image_size} px, {len(record.classes)} classes: {classes}"
        )
        self.console.print(f"Run folder: {run_dir}")
        if start_epoch:
            self.console.print(f"Continuing after epoch {start_epoch} of {epochs}.")
        self.console.print(
            f"{'epoch':>7} {'stage':>5} {'train loss':>10} {'acc':>6} {'val loss':>9} {'acc':>6} {'F1':>6} "
            f"{'time':>6} {'img/s':>7}"
        )

    def _on_epoch_start(self, epoch, stage, batches) -> None:
        if not self.tty:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{self.epochs} [{stage}]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=batches, stats="")

    def _on_batch(self, epoch, batch, batches, loss, acc, images_per_s) -> None:
        if self.progress is not None:
            stats = f"loss {loss:.3f} acc {acc:.3f} {images_per_s:.0f} img/s"
            self.progress.update(self.task, completed=batch, stats=stats)

    def _on_epoch_end(self, record, improved, best_f1, best_epoch) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        self.epoch_times.append(record["epoch_time"])
        star = " *" if improved else ""
        self.console.print(
            f"{record['epoch']:>3}/{self.epochs:<3} {record['stage']:>5} {record['train_loss']:>10.4f} "
            f"{record['train_acc']:>6.3f} {record['val_loss']:>9.4f} {record['val_acc']:>6.3f} "
            f"{record['val_f1']:>6.3f} {output.duration(record['epoch_time']):>6} {record['images_per_s']:>7.0f}{star}"
        )

    def _on_calibrated(self, calibration) -> None:
        c = calibration
        self.console.print(f"Calibrated the confidences: temperature {c['temperature']:.3f}, validation calibration "
                           f"error {c['val_ece_before']:.4f} -> {c['val_ece_after']:.4f}")  # fmt: skip

    def _on_end(self, summary) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def finish(self, summary: dict[str, Any]) -> None:
        state = summary["state"]
        best = summary.get("best_val_f1")
        best_text = (
            f"best validation macro-F1 {best:.4f} at epoch {summary['best_epoch']}"
            if best is not None
            else "no epoch finished"
        )
        colour = {"finished": "green", "early-stopped": "green", "interrupted": "yellow"}.get(state, "red")
        self.console.print(
            f"[{colour}]{state}[/{colour}] after {summary['epochs_done']}/{summary['epochs_planned']} epochs "
            f"({output.duration(summary.get('wall_time_s'))}); {best_text}."
        )
        if state == "interrupted":
            self.console.print(f"Resume with: cellmorphnet train --resume {summary['run_dir']}")
        else:
            self.console.print(f"Best model: {summary['run_dir']}/checkpoints/best.pt")
