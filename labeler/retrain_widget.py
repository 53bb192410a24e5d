"""Retrain panel: start/cancel a background retraining round and watch it learn.

Training runs in :class:`loop.retrain.RetrainJob`'s own OS process; a ``QTimer`` polls its
events (never blocking). The loss and validation IoU are drawn live with matplotlib. When a
round publishes a promoted model, the session's ``model_changed`` signal fires (the review panel
re-ranks in the background); a regressed candidate is reported and not swapped in.
"""

from __future__ import annotations

import math
import threading

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from labeler.session import ProjectSession
from model.errors import DclabelError

POLL_MS = 200


class RetrainWidget(QWidget):
    """The retrain panel.

    Args:
        session: The open project session.
        job_options: Extra keyword arguments for :class:`loop.retrain.RetrainJob` (tests use a
            tiny model and one thread).
    """

    def __init__(self, session: ProjectSession, parent: QWidget | None = None, **job_options) -> None:
        super().__init__(parent)
        self.session = session
        self.job_options = job_options
        self.job = None
        self.events: list[dict] = []
        self.history: list[dict] = []  # epoch records of the running round
        self.steps: list[tuple[float, float]] = []  # (fractional epoch, loss)
        self._poller: threading.Thread | None = None
        self._polled: list[list[dict]] = []  # event batches from the poll thread (list.append is atomic)

        self.epochs = QSpinBox()
        self.epochs.setRange(1, 500)
        self.epochs.setValue(5)
        self.epochs.setToolTip("At least this many epochs; with few reviewed chips a round trains more, "
                               "to reach its minimum of chip passes (dclabel retrain --min-passes)")
        self.round_epochs = self.epochs.value()  # epochs of the running round (its "started" event says)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(5)
        self.lr.setRange(1e-5, 1.0)
        self.lr.setSingleStep(1e-4)
        self.lr.setValue(1e-3)
        self.lr.setToolTip("Learning rate of a first model; later rounds fine-tune the current model at a quarter of it.")
        self.start_button = QPushButton("Retrain")
        self.start_button.setToolTip("Train a new model version on the reviewed chips (background process)")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setMaximumHeight(14)
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        self.versions = QListWidget()
        self.versions.setMaximumHeight(90)

        self.figure = Figure(figsize=(3.2, 1.8), dpi=90, facecolor="#262930")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(150)
        self.ax_loss = self.figure.add_subplot(111)
        self.ax_iou = self.ax_loss.twinx()
        self._style_axes()
        (self.step_line,) = self.ax_loss.plot([], [], color="#ff9f43", lw=0.8, alpha=0.5)
        (self.loss_line,) = self.ax_loss.plot([], [], "o-", color="#ff9f43", ms=3)
        (self.iou_line,) = self.ax_iou.plot([], [], "s-", color="#4fc3f7", ms=3)

        form = QFormLayout()
        form.addRow("Epochs", self.epochs)
        form.addRow("Learning rate", self.lr)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.canvas)
        layout.addWidget(self.model_label)
        layout.addWidget(QLabel("Versions"))
        layout.addWidget(self.versions)

        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.refresh_versions()

    # ----- control -----------------------------------------------------------------------------
    def start(self) -> bool:
        """Start a round (or queue a follow-up if one is running). Returns True if it started."""
        from loop.retrain import RetrainJob

        options = {"epochs": self.epochs.value(), "lr": self.lr.value(), **self.job_options}
        if self.job is None or not self.job.is_running:
            self.job = RetrainJob(self.session.project.root, **options)
        try:
            started = self.job.request()
        except DclabelError as exc:
            show_warning(f"Cannot retrain: {exc}")
            return False
        except RuntimeError as exc:
            show_error(f"Cannot retrain: {exc}")
            return False
        if started:
            self.history, self.steps = [], []
            self._draw()
            self.status.setText("starting the training process…")
            self.progress.setRange(0, 0)  # busy until the first step
        else:
            show_info("A retraining round is running; another one will follow it.")
        self.start_button.setText("Retrain again")
        self.cancel_button.setEnabled(True)
        self.timer.start()
        return started

    def cancel(self) -> None:
        """Cancel the running round; the current model stays."""
        if self.job is not None and self.job.is_running:
            self.job.cancel()
            self.status.setText("cancelling…")

    def poll(self) -> list[dict]:
        """Handle the events that arrived since the last poll (called by the timer).

        ``RetrainJob.poll()`` itself runs on a short-lived helper thread: when a round ends it
        joins the child process, which can take a second or two while torch shuts down, and the
        Qt main thread must not wait for that. Its events are handled here on the next tick.
        """
        if self.job is None:
            self.timer.stop()
            return []
        events: list[dict] = []
        while self._polled:
            events.extend(self._polled.pop(0))
        if self._poller is None or not self._poller.is_alive():
            self._poller = threading.Thread(target=self._poll_job, args=(self.job,), daemon=True,
                                            name="dclabel-retrain-poll")
            self._poller.start()
        for e in events:
            self._handle(e)
        self.events.extend(events)
        if not self.job.is_running and not self._poller.is_alive() and not self._polled:
            self.timer.stop()
            self.cancel_button.setEnabled(False)
            self.start_button.setText("Retrain")
            self.progress.setRange(0, 1)
            self.progress.setValue(1 if self.history else 0)
        return events

    def _poll_job(self, job) -> None:
        try:
            events = job.poll()
        except Exception as exc:  # never let a broken queue kill the GUI
            events = [{"type": "error", "message": f"lost contact with the training process: {exc}"},
                      {"type": "done"}]
        if events:
            self._polled.append(events)

    def _handle(self, e: dict) -> None:
        kind = e.get("type")
        if kind == "started":  # a round (a queued follow-up too) draws its own curves
            self.history, self.steps = [], []
            # with few reviewed chips the round trains more epochs than asked (its minimum of chip passes)
            self.round_epochs = int(e.get("epochs") or self.epochs.value())
            self._draw()
            if e.get("restart"):  # the current model finds nothing on the new chips: nothing to fine-tune
                how = f"training a new model from scratch ({e['parent']} found nothing on the new chips)"
                show_info(f"Not fine-tuning: {e['restart']}.")  # the status line moves on at the first epoch
            else:
                how = f"fine-tuning {e['parent']}" if e.get("parent") else "training a first model"
            rate = f" at lr {e['lr']:.2g}" if e.get("lr") is not None else ""
            self.status.setText(f"{how}{rate} on {e.get('n_train')} chips for {self.round_epochs} epochs, "
                                f"validating on {e.get('n_val')}")
        elif kind == "step":
            total = int(e.get("total") or 0)
            self.progress.setRange(0, max(total, 1))
            self.progress.setValue(int(e.get("done") or 0))
            if e.get("loss") is not None and total:
                epochs = max(self.round_epochs, 1)
                self.steps.append((int(e["done"]) * epochs / total, float(e["loss"])))
                if len(self.steps) % 5 == 0:
                    self._draw()
        elif kind == "epoch":
            self.history.append(e)
            iou = e.get("val_iou")
            self.status.setText(
                f"epoch {e.get('epoch')}/{e.get('total')}: loss {float(e.get('loss', math.nan)):.3f}"
                + (f", val IoU {float(iou):.3f}" if iou is not None else "")
            )
            self._draw()
        elif kind == "published":
            self.status.setText(f"{e['version']} is the current model: {e.get('reason', '')}")
            iou = e.get("val_iou")
            measured = f"val IoU {float(iou):.3f}" if iou is not None else "val IoU not measured"
            show_info(f"New model {e['version']} ({measured}); re-ranking the queue.")
            self.refresh_versions()
            self.session.model_changed.emit(str(e["version"]))
        elif kind == "rejected":
            self.status.setText(f"{e['version']} kept as a candidate: {e.get('reason', '')}")
            show_warning(f"Model {e['version']} did not beat the current one and was not swapped in: "
                         f"{e.get('reason', '')}")
            self.refresh_versions()
        elif kind == "cancelled":
            self.status.setText(e.get("message", "cancelled"))
            show_info(e.get("message", "Retraining cancelled."))
        elif kind == "error":
            self.status.setText(f"failed: {e.get('message')}")
            show_error(f"Retraining failed: {e.get('message')}")

    # ----- display -----------------------------------------------------------------------------
    def refresh_versions(self) -> None:
        """Current model and version history from the registry."""
        try:
            registry = self.session.project.registry
            versions = registry.versions()
            current = registry.current()
        except DclabelError as exc:
            self.model_label.setText(f"model registry unreadable: {exc}")
            return
        if current is None:
            self.model_label.setText("No model yet: review chips with data centers, then Retrain.")
        else:
            metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(current.metrics.items())
                                if isinstance(v, float) and not k.startswith("baseline") and k != "epoch")
            self.model_label.setText(f"Current model <b>{current.version}</b> ({metrics or 'no metrics'})")
        self.versions.clear()
        for mv in reversed(versions):
            iou = mv.metrics.get("iou")
            text = f"{mv.version}  {mv.status}" + (f"  IoU {iou:.3f}" if iou is not None else "")
            self.versions.addItem(f"{text}  {mv.created[:16]}")

    def _style_axes(self) -> None:
        for ax in (self.ax_loss, self.ax_iou):
            ax.set_facecolor("#262930")
            ax.tick_params(colors="#c0c0c0", labelsize=7)
            for spine in ax.spines.values():
                spine.set_color("#606060")
        self.ax_loss.set_xlabel("epoch", color="#c0c0c0", fontsize=7)
        self.ax_loss.set_ylabel("loss", color="#ff9f43", fontsize=7)
        self.ax_iou.set_ylabel("val IoU", color="#4fc3f7", fontsize=7)
        self.ax_iou.set_ylim(0, 1)
        self.figure.subplots_adjust(left=0.16, right=0.84, bottom=0.22, top=0.95)

    def _draw(self) -> None:
        """Update the loss and IoU lines in place (clearing the axes costs ~100 ms a redraw)."""
        steps = list(zip(*self.steps, strict=True)) if self.steps else ([], [])
        self.step_line.set_data(*steps)
        ep = [h.get("epoch", i + 1) for i, h in enumerate(self.history)]
        self.loss_line.set_data(ep, [h.get("loss", math.nan) for h in self.history])
        self.iou_line.set_data(ep, [h.get("val_iou", math.nan) for h in self.history])
        # x: epochs 0..the round's count (or further, if a longer round is drawn); y: the loss data.
        # The two axes share x (twinx); setting it on one sets both, autoscaling would not.
        xs = [x for x in list(steps[0]) + ep if x == x]
        self.ax_loss.set_xlim(0, max([float(self.round_epochs), 1.0, *xs]))
        self.ax_loss.relim()
        self.ax_loss.autoscale_view(scalex=False)
        self.canvas.draw_idle()

    def close_job(self) -> None:
        """Stop the timer and the training process (on viewer close)."""
        self.timer.stop()
        if self._poller is not None:
            self._poller.join(10)
        if self.job is not None:
            self.job.close()
