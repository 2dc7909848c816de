"""The training loop: one explicit loop, from data to checkpoints, metrics and final COCO evaluation.

Run under torchrun for several processes; every process reads RANK / LOCAL_RANK / WORLD_SIZE.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..amp import amp_dtype, make_scaler, overflow_status
from ..config import Config, to_dict
from ..data.coco import MIN_IMAGE_SIZE
from ..data.cpus import node_processes
from ..data.shared_memory import shm_warning
from ..device import Runtime, auto_device_warning, setup_runtime, shutdown
from ..errors import UserError
from ..metrics import write_termination_message
from ..model import build_model, total_loss
from ..model.backbone import random_backbone_warning
from ..progress import ProgressLogger
from .checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_training_state,
    load_weights,
    periodic_checkpoint_due,
    prune_checkpoints,
    remove_partial_writes,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from .counters import StepCounters
from .failures import Terminated, report_failure
from .optim import build_optimizer, describe_optimizer, init_state
from .parallel import compile_forward, replicate, share_running_statistics, stop_group, sync_batch_norm
from .reporting import (
    LossWindow,
    RunClock,
    ThroughputWindow,
    TrainingDiverged,
    diverged_error,
    loss_values,
    nonfinite_verdict,
    results_losses,
)
from .schedule import lr_factor, scaled_lr, schedule_warnings
from .sigterm import SigtermStop, agree
from .splits import (
    EmptySplit,
    bad_image_ids_over_ranks,
    coco_split,
    distinct_over_ranks,
    evaluate_split,
    sum_over_ranks,
)
from .startup import check_outputs
from .step import TrainStep
from .training_setup import TrainOptions, open_metrics, seed_everything, train_dataset, train_loader
from .work_dir_lock import hold_work_dir, lock_wait_seconds

__all__ = ["TrainOptions", "TrainingDiverged", "train"]


class _Trainer:
    """One training run. Model handles: :attr:`model` (the module: state dicts, evaluation),
    :attr:`replica` (DDP around it under several processes, else the model) and :attr:`forward` (what
    the step calls: the replica, compiled with ``--compile``)."""

    def __init__(
        self,
        cfg: Config,
        opts: TrainOptions,
        runtime: Runtime,
        log: Callable[[str], None],
        sigterm: SigtermStop | None = None,
    ) -> None:
        self.cfg, self.opts, self.rt, self.sigterm = cfg, opts, runtime, sigterm
        self.log = log if runtime.is_main else (lambda _msg: None)
        self.ckpt_dir = opts.work_dir / "checkpoints"
        seed_everything(cfg.train.seed)
        self.dataset = train_dataset(cfg, opts.data_path, skip_bad_images=opts.skip_bad_images)
        self.model = sync_batch_norm(build_model(cfg).to(runtime.device), cfg, runtime)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.total_batch = cfg.data.samples_per_device * runtime.world_size
        self.base_lr = scaled_lr(cfg.train, self.total_batch)
        self.optimizer = build_optimizer(
            self.params, cfg.train, self.base_lr, device_kind=runtime.kind, tensor_lr=opts.compile
        )
        init_state(self.optimizer)
        self.counters = StepCounters(runtime.device)
        self.dtype = amp_dtype(runtime.kind, cfg.train.amp)
        self.scaler = make_scaler(runtime.kind, self.dtype, cfg.train.loss_scale)
        self.loader = train_loader(self.dataset, cfg, runtime)
        self.iters_per_epoch = self.loader.batches_per_epoch
        self.total_iters = self.iters_per_epoch * cfg.train.epochs  # the schedule's length
        # Where this run ends: the schedule's end, or train.max_iters before it.
        self.stop_iteration = min(cfg.train.max_iters or self.total_iters, self.total_iters)
        self.progress = ProgressLogger(
            epochs=cfg.train.epochs, total_iterations=self.stop_iteration, interval=cfg.train.log_interval
        )
        if runtime.is_main and log is print:
            self.log = self.progress.write
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda it: self.lr_factor(it))
        self.epoch, self.iteration, self.batch_in_epoch = 0, 0, 0
        self.nonfinite, self.truncated = 0, 0
        self.last_losses: dict[str, float] = {}
        self.losses = LossWindow()
        self.images_per_second = 0.0  # at the end of the last epoch trained (kept in the checkpoints)
        self.last_checkpoint: Path | None = None  # the newest this run wrote or resumed from
        self.replica = replicate(self.model, runtime)
        self.forward = compile_forward(
            self.replica, compile=opts.compile, mode=opts.compile_mode, distributed=runtime.distributed
        )
        self.train_step = TrainStep(
            self.forward,
            self.optimizer,
            self.params,
            device_kind=runtime.kind,
            dtype=self.dtype,
            scaler=self.scaler,
            grad_clip=cfg.train.grad_clip,
            counters=self.counters,
            compile_update=opts.compile,
            loss_fn=lambda out: total_loss(out),  # looked up at call time
            overflow=overflow_status(runtime.kind, self.dtype, runtime.device),
            distributed=runtime.distributed,
        )
        self.stop_group = stop_group(runtime)
        self.metrics = open_metrics(opts.metrics_port, main=runtime.is_main)
        self._describe_setup()

    def _describe_setup(self) -> None:
        """Log how the data is loaded, schedule warnings and the optimiser; label the metrics."""
        workers = self.loader.num_workers
        self.log(
            f"data: {workers} loader worker(s) per process"
            + (f", {self.cfg.data.prefetch_factor} batches ahead each" if workers else "")
            + (", pinned memory" if self.loader.pin_memory else "")
        )
        warnings = [
            random_backbone_warning(self.cfg.model.backbone, load_from=self.opts.load_from),
            *schedule_warnings(self.cfg.train, self.total_iters),
            shm_warning(self.cfg, workers=workers, local_processes=node_processes()),
            auto_device_warning(self.opts.device, self.rt.kind),
        ]
        for warning in filter(None, warnings):
            self.log(f"warning: {warning}")
        if self.train_step.overflow is not None:
            self.log(
                "amp: this NPU saturates fp16 overflows (no INF_NAN mode): its float status is read on "
                f"the device and a step that overflows under the fixed loss scale {self.cfg.train.loss_scale:g} "
                "is skipped and counted as non-finite"
            )
        optimizer = describe_optimizer(self.optimizer)
        self.metrics.set_info(
            config=self.opts.config_name,
            device=self.rt.kind,
            world_size=str(self.rt.world_size),
            optimizer=optimizer,
        )
        self.log(f"optimizer: {optimizer}")
        if self.metrics.port is not None:
            self.log(f"metrics: Prometheus metrics on http://0.0.0.0:{self.metrics.port}/metrics")

    def _limit_reached(self) -> bool:
        """Whether ``train.max_iters`` is set and this run has got there."""
        return 0 < self.cfg.train.max_iters <= self.iteration

    @property
    def checkpoint(self) -> Path:
        """The checkpoint of where training stands: the newest this run wrote (an epoch's, or where
        ``train.max_iters`` stopped it inside an epoch) or resumed from."""
        return self.last_checkpoint or self.ckpt_dir / f"epoch_{self.epoch}.pth"

    def lr_factor(self, iteration: int) -> float:
        """Multiplier of the scaled learning rate at a global iteration (0-based)."""
        return lr_factor(iteration, iters_per_epoch=self.iters_per_epoch, cfg=self.cfg.train)

    # -- state -------------------------------------------------------------------------------------
    def state(self, bad_image_ids: list[int]) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "iteration": self.iteration,
            "batch_in_epoch": self.batch_in_epoch,
            "rng": rng_state(),
            "config": to_dict(self.cfg),
            "class_names": list(self.dataset.class_names),
            "world_size": self.rt.world_size,
            "nonfinite_steps": self.nonfinite,
            "bad_image_ids": bad_image_ids,
            "figures": {"images_per_second": self.images_per_second, "losses": self.last_losses},
            "train_images": len(self.dataset),
        }

    def _bad_image_ids(self) -> list[int]:
        """COCO ids of the images any process found bad so far (with ``--skip-bad-images``; a collective
        then, so every process asks)."""
        return bad_image_ids_over_ranks(self.dataset, self.rt) if self.opts.skip_bad_images else []

    def restore(self) -> None:
        if self.rt.is_main:
            partial = remove_partial_writes(self.ckpt_dir)
            if partial:
                self.log(f"checkpoints: removed {len(partial)} unfinished write(s) of an interrupted run")
        if self.opts.resume:
            path = latest_checkpoint(self.ckpt_dir)
            if path is None:
                self.log(f"resume: no checkpoint in {self.ckpt_dir} yet, starting from scratch")
            else:
                self._resume_from(path)
                return
        if self.opts.load_from is not None:
            source = self.opts.load_from
            skipped = load_weights(self.model, source, to_dict(self.cfg))
            if source.is_dir():  # a checkpoints directory: say which of its files
                source = latest_checkpoint(source) or source
            self.log(
                f"load-from: weights of {source}"
                + (f" (shape changed, left initialised: {', '.join(skipped)})" if skipped else "")
            )

    def _resume_from(self, path: Path) -> None:
        state = load_checkpoint(path)
        self.last_checkpoint = path
        load_training_state(
            path, state, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
            config=to_dict(self.cfg),
        )  # fmt: skip
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.iteration = state["epoch"], state["iteration"]
        self.batch_in_epoch = state["batch_in_epoch"]
        self.nonfinite = state.get("nonfinite_steps", 0)
        self.dataset.mark_bad(state.get("bad_image_ids", []))  # skipped_images counts the whole run
        images = state.get("train_images")
        if images is not None and images != len(self.dataset):
            self.log(
                f"warning: resume: the checkpoint's run trained on {images} images per epoch, this one has "
                f"{len(self.dataset)} (another data set, or data.filter_empty_gt): the epoch in progress "
                "goes on at the checkpoint's iteration, in the new data's batches"
            )
        figures = state.get("figures") or {}
        self.images_per_second = float(figures.get("images_per_second", 0.0))
        self.last_losses = dict(figures.get("losses") or {})
        restore_rng(state["rng"])
        old_batch = _total_batch(state) or self.total_batch
        if old_batch != self.total_batch:
            self._rebatch(old_batch, state.get("world_size"))
        self._follow_schedule()
        epochs = self.cfg.train.epochs
        if self.epoch < epochs and self._limit_reached():
            self.log(
                f"resume: {path.name}: train.max_iters={self.cfg.train.max_iters} is reached (iteration "
                f"{self.iteration}), nothing to train" + ("; evaluating" if self.opts.evaluate else "")
            )
            return
        if self.epoch < epochs:
            self.log(f"resume: {path.name} at epoch {self.epoch + 1}, iteration {self.iteration}")
            return
        self.log(
            f"resume: {path.name}: training is complete ({self.epoch} epochs, iteration {self.iteration}), "
            "nothing to train"
            + (
                f" (train.epochs={epochs} is fewer: the checkpoint's training stands)"
                if self.epoch > epochs
                else ""
            )
            + ("; evaluating" if self.opts.evaluate else "")
        )

    def _rebatch(self, old_batch: int, old_world_size: int | None) -> None:
        """The checkpoint was written with another total batch (another process count, or
        ``data.samples_per_device``): keep the epoch and the images done in it, in batches of the new size,
        so that the iteration count, the schedule's epochs and the end of the run stay right."""
        done = self.batch_in_epoch * old_batch
        self.batch_in_epoch = min(done // self.total_batch, self.iters_per_epoch)
        self.iteration = self.epoch * self.iters_per_epoch + self.batch_in_epoch
        self.log(
            f"resume: the checkpoint was written with a total batch of {old_batch}"
            + (f" ({old_world_size} processes)" if old_world_size else "")
            + f", now {self.total_batch}: {done} images into epoch {self.epoch + 1} are iteration "
            f"{self.iteration} now; the data order of the current epoch changes"
        )

    def _follow_schedule(self) -> None:
        """The learning rate follows this run's config and total batch from the resumed iteration on (the
        checkpoint's scheduler state holds the rate it was started with)."""
        old = self.scheduler.base_lrs[0]
        self.scheduler.base_lrs = [self.base_lr for _ in self.optimizer.param_groups]
        self.scheduler.last_epoch = self.iteration
        rate = self.base_lr * self.lr_factor(self.iteration)
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.base_lr
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(rate)
            else:
                group["lr"] = rate
        if not math.isclose(old, self.base_lr, rel_tol=1e-9):
            self.log(f"resume: learning rate {self.base_lr:g} (the checkpoint's run had {old:g})")

    def save(self, name: str) -> Path:
        path = self.ckpt_dir / name
        bad_image_ids = self._bad_image_ids()
        if self.rt.is_main:
            save_checkpoint(path, self.state(bad_image_ids))
            t = self.cfg.train
            prune_checkpoints(
                self.ckpt_dir, keep_iter=t.keep_iter_checkpoints, epoch_every=t.epoch_checkpoint_every
            )
        self.last_checkpoint = path
        return path

    def termination_text(self, checkpoint: Path | None = None) -> str:
        """The ``error`` text of a SIGTERM (or SIGINT) stop: where training stood and the checkpoint to
        resume from."""
        if checkpoint is None:
            with contextlib.suppress(UserError, OSError):
                checkpoint = latest_checkpoint(self.ckpt_dir)
        return f"terminated by {self._signal_name} at iteration {self.iteration}; checkpoint {checkpoint or 'none'}"

    @property
    def _signal_name(self) -> str:
        return "SIGTERM" if self.sigterm is None else self.sigterm.signal_name

    def _terminated(self, text: str) -> Terminated:
        return Terminated(text, 143 if self.sigterm is None else self.sigterm.exit_code)

    def _stop_requested(self) -> bool:
        """Whether any process got SIGTERM; every process asks at the same step boundary."""
        flag = self.sigterm is not None and self.sigterm.requested
        return agree(flag, self.stop_group) if self.rt.distributed else flag

    def _terminate(self, saved: Path | None = None) -> Terminated:
        """Checkpoint at this step boundary (unless ``saved`` holds it already) and return the
        :class:`Terminated` to raise."""
        path = saved or self.save(f"iter_{self.iteration}.pth")
        if self.rt.distributed:
            agree(True, self.stop_group)  # the others wait until rank 0 has written it
        self.log(f"{self._signal_name}: stopped at iteration {self.iteration}, checkpoint {path}")
        return self._terminated(self.termination_text(path))

    # -- one step ----------------------------------------------------------------------------------
    def step(self, batch: Any) -> dict[str, torch.Tensor]:
        """One optimisation step (:class:`~.step.TrainStep`: no host synchronisation); returns the
        forward's outputs plus ``loss``, on the device. Non-finite and dropped-positive counts
        accumulate in :attr:`counters`, read when the loop logs."""
        images = batch.images.to(self.rt.device, non_blocking=True)
        gt = batch.gt.to(self.rt.device, non_blocking=True)
        out = self.train_step(images, gt, self.iteration + 1)
        self.losses.add(out, out["applied"])
        self.scheduler.step()
        return out

    def _after_step(self, out: dict[str, torch.Tensor]) -> None:
        """Count the step; at logging iterations read the counters and report; checkpoint when due;
        stop at this boundary on SIGTERM."""
        self.iteration += 1
        self.batch_in_epoch += 1
        end_of_epoch = self.batch_in_epoch == self.iters_per_epoch
        last = self._limit_reached()
        if self.progress.due(self.iteration) or end_of_epoch or last:
            self._read_counters()
            self._report(out)
        if end_of_epoch or last:
            self._measure_throughput()  # before the checkpoint's write
        interval = self.cfg.train.checkpoint_interval
        saved = None
        if (periodic_checkpoint_due(self.iteration, interval) or last) and not end_of_epoch:
            saved = self.save(f"iter_{self.iteration}.pth")
        if self._stop_requested():
            raise self._terminate(saved)

    def _measure_throughput(self) -> None:
        """The run's images per second so far (kept in the checkpoints, reported in the results)."""
        if self.iteration > self.clock.start_iteration:  # else an earlier attempt's figure stands
            self.images_per_second = round(self.clock.images_per_second(self.iteration, self.total_batch), 3)

    def _read_counters(self) -> None:
        """Read the step counters (a host sync: logging iterations only); log and count skipped steps
        and stop on too many consecutive ones."""
        counts = self.counters.read(distributed=self.rt.distributed)
        self.metrics.add_dropped_positives(counts.dropped_positives)
        limit = self.cfg.train.max_nonfinite
        message, diverged = nonfinite_verdict(counts, limit)
        if message is None:
            return
        self.nonfinite += counts.nonfinite
        self.metrics.add_nonfinite(counts.nonfinite)
        self.log(message)
        if diverged:
            self.save(f"diverged_iter_{self.iteration}.pth")
            raise diverged_error(counts, limit)

    def _report(self, out: dict[str, torch.Tensor]) -> None:
        """Feed the progress line and the metrics: losses by name, learning rate, throughput, time left."""
        now = time.perf_counter()
        self.last_losses = self.losses.read() or loss_values(out)  # all skipped: show the last (non-finite)
        values = dict(
            losses=self.last_losses,
            # the rate the last step trained with (the scheduler has moved on to the next one's)
            lr=self.scheduler.base_lrs[0] * self.lr_factor(self.iteration - 1),
            eta_seconds=self.clock.eta(now, self.iteration, self.stop_iteration),
            **self.window.figures(now),
        )
        epoch, epochs = self.epoch + 1, self.cfg.train.epochs
        self.metrics.update(
            epoch=epoch, total_epochs=epochs, iteration=self.iteration, total_iterations=self.stop_iteration,
            **values,
        )  # fmt: skip
        if self.rt.is_main:
            self.progress.update(epoch=epoch, iteration=self.iteration, **values)
        self.clock.settled(now, self.iteration)
        self.window.restart()

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Restore, train every remaining epoch, evaluate; returns the results."""
        self.restore()
        self._describe_run()
        self.model.train()
        self.window, self.clock = ThroughputWindow(), RunClock(self.iteration)
        if self.sigterm is not None:
            self.sigterm.deferred = True  # from here on SIGTERM waits for the next step boundary
        while self.epoch < self.cfg.train.epochs and not self._limit_reached():
            self._run_epoch()
        if self.iteration and self._stop_requested():  # SIGTERM came while the last checkpoint was written
            raise self._terminated(self.termination_text(self.checkpoint))
        if self.sigterm is not None:
            self.sigterm.deferred = False  # evaluation stops at once on SIGTERM
        results = self._results()
        if self.opts.evaluate:
            share_running_statistics(self.model, self.rt)
            results.update(self.evaluate())
        return results

    def _run_epoch(self) -> None:
        """The rest of the current epoch, then its checkpoint."""
        self.loader.set_epoch(self.epoch, self.batch_in_epoch)
        tick = time.perf_counter()
        for batch in self.loader:
            data_wait = time.perf_counter() - tick
            out = self.step(batch)
            self.window.add(images=self.total_batch, data_wait=data_wait)
            self._after_step(out)
            if self._limit_reached():
                break
            tick = time.perf_counter()
        truncated = sum_over_ranks(self.loader.stats()["truncated_instances"], self.rt)
        self.metrics.add_truncated(truncated - self.truncated)
        self.truncated = truncated
        if self.batch_in_epoch < self.iters_per_epoch and self._limit_reached():  # _after_step saved
            self.log(
                f"train.max_iters={self.cfg.train.max_iters} reached in epoch {self.epoch + 1}: "
                f"checkpoint {self.checkpoint}"
            )
            return
        self.epoch += 1
        self.batch_in_epoch = 0
        path = self.save(f"epoch_{self.epoch}.pth")
        self.log(f"epoch {self.epoch} done: checkpoint {path}")

    def _describe_run(self) -> None:
        cfg, rt = self.cfg, self.rt
        self.log(
            f"train: {len(self.dataset)} images, {self.dataset.num_classes} classes, {rt.world_size} "
            f"process(es) on {rt.kind}, batch {self.total_batch}, lr {self.base_lr:g}, "
            f"{self.iters_per_epoch} iterations/epoch x {cfg.train.epochs} epochs"
            + (
                f", stopping at iteration {self.stop_iteration} (train.max_iters)"
                if self.stop_iteration < self.total_iters
                else ""
            )
            + ", "
            f"amp {self.dtype or 'fp32'}"
            + (f", compiled ({self.opts.compile_mode})" if self.opts.compile else "")
        )
        if self.dataset.filtered_images:
            self.log(
                f"data: {self.dataset.filtered_images} images without annotations or under {MIN_IMAGE_SIZE} pixels "
                "on a side left out (data.filter_empty_gt)"
            )
        counts = self.dataset.annotation_counts()
        if any(counts.values()):
            self.log("data: " + ", ".join(f"{n} {key.replace('_', ' ')}" for key, n in counts.items()))
        _, val = coco_split(self.opts.data_path, "val2017")
        if self.opts.evaluate and not val.is_file():
            self.log(
                f"warning: no {val}: the evaluation after training will be skipped (--no-eval trains without one)"
            )

    def _results(self) -> dict[str, Any]:
        """What training did: iterations, throughput, skipped steps, the last checkpoint, the last
        logged losses by name, the data set's counts."""
        return {
            "epochs": self.epoch,
            "iterations": self.iteration,
            "images_per_second": self.images_per_second,
            "nonfinite_steps": self.nonfinite,
            "checkpoint": str(self.checkpoint),
            **results_losses(self.last_losses),
            **self.dataset.annotation_counts(),
            "skipped_images": distinct_over_ranks(self.dataset.bad_images(), self.rt),
        }

    def evaluate(self) -> dict[str, Any]:
        _, ann = coco_split(self.opts.data_path, "val2017")
        if not ann.is_file():
            self.log(f"evaluation skipped: no {ann}")
            return {}
        try:
            return evaluate_split(
                self.model,
                self.cfg,
                data_path=self.opts.data_path,
                split="val2017",
                runtime=self.rt,
                autocast_dtype=self.dtype,
                out_dir=self.opts.work_dir,
                log=self.log,
                skip_bad_images=self.opts.skip_bad_images,
                class_names=self.dataset.class_names,
            )
        except EmptySplit as exc:  # every process finds it so, before any collective
            self.log(f"evaluation skipped: {exc}")
            return {}


def _total_batch(state: dict[str, Any]) -> int | None:
    """Images per step of the run that wrote a checkpoint: its ``data.samples_per_device`` x its processes."""
    per_device = ((state.get("config") or {}).get("data") or {}).get("samples_per_device")
    return int(per_device) * int(state["world_size"]) if per_device and state.get("world_size") else None


def train(cfg: Config, opts: TrainOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Check the outputs, train, checkpoint, evaluate; rank 0 writes ``results.json`` and the
    termination message with the results.

    A process that fails writes the failure's termination message instead, unless a peer of its pod
    failed first (see :mod:`.failures`). On SIGTERM or SIGINT training stops at the next step boundary,
    writes a checkpoint and raises :class:`Terminated` (its message is retryable); ``opts.stop_timeout``
    seconds after the signal the process exits with 143 (130 for SIGINT) whatever it is doing.
    """
    trainer: _Trainer | None = None
    runtime: Runtime | None = None

    def describe() -> str:
        if trainer is not None:
            return trainer.termination_text()
        return f"terminated by {sigterm.signal_name} at iteration 0; checkpoint none"

    sigterm = SigtermStop(
        describe,
        timeout_s=opts.stop_timeout,
        on_timeout=lambda text: report_failure(opts.termination_log, Terminated(text)),
    )
    sigterm.install()
    lock = None
    try:
        check_outputs(opts)
        if os.environ.get("RANK", "0") == "0":  # one process per run takes the work dir
            lock = hold_work_dir(opts.work_dir, wait_s=lock_wait_seconds(), log=log)
        runtime = setup_runtime(opts.device)
        trainer = _Trainer(cfg, opts, runtime, log, sigterm)
        results = trainer.run()
        if runtime.is_main:
            (opts.work_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            trainer.metrics.set_results(results)
            if opts.termination_log is not None:
                write_termination_message(opts.termination_log, results)
            trainer.metrics.finish()
        return results
    except Exception as exc:
        report_failure(opts.termination_log, exc)
        raise
    finally:
        if trainer is not None:
            trainer.progress.close()
            trainer.metrics.close()
        if runtime is not None:
            shutdown(runtime)
        if lock is not None:
            lock.close()
        sigterm.uninstall()
