"""train.py's main loop: set up (flags checked before any training), epochs of Matryoshka steps, validation
at every trained granularity, checkpoints, outputs."""

from __future__ import annotations

import argparse
import math
import time
from contextlib import ExitStack
from typing import Callable, Dict, List, Optional

import torch
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import ModelEmaV3, random_seed
from tqdm import tqdm

from ..data import create_eval_loader, create_mixup, create_train_loader, dataset_classes, model_data_config
from ..data.match import data_channels, data_mismatch_warnings
from ..flags import model_kwargs_from_args
from ..runtime import check_output_dir
from ..weights import build_model, load_checkpoint
from .checkpoint_files import newest_checkpoint, run_files
from .checkpointing import (
    CheckpointManager,
    check_free_space,
    check_resume_matches,
    read_training_state,
    reconcile_best,
    resolve_resume,
    rng_state,
    set_rng_state,
)
from .config import parse_args, schedule_flags
from .distributed import DistInfo, all_rng_states, barrier, from_main, init_distributed, replicas_identical
from .matryoshka import MatryoshkaStep, NonFiniteLossError, build_criterion, micro_batch_size, untrained_widths
from .midepoch import CheckpointTrigger, gather_rank_states, resolve_auto_resume, resume_position
from .outputs import Summary, attach_log_file, experiment_dir, setup_logging, write_args
from .preemption import Preemption
from .recipe import recipe_card
from .run_lock import RunLock
from .validation import validate

__all__ = ["main", "TrainingError"]

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class TrainingError(RuntimeError):
    """Training stopped (e.g. a non-finite loss); the message says where and what was kept."""


def _create_model(args: argparse.Namespace, num_classes: int):
    kwargs = model_kwargs_from_args(args)
    kwargs.setdefault("num_classes", num_classes)
    try:
        model = build_model(args.model, pretrained=args.pretrained, **kwargs)
    except TypeError as e:
        raise ValueError(f"--model {args.model}: {e}") from e
    if args.head_init_bias is not None:
        torch.nn.init.constant_(model.head.bias, args.head_init_bias)
    if args.initial_checkpoint:
        load_checkpoint(model, args.initial_checkpoint)
    return model


def _granularities(args: argparse.Namespace, model) -> List[int]:
    gs = list(args.granularities) if args.granularities else list(model.matryoshka_levels)
    if not gs:
        raise ValueError("--granularities: the model has no valid Matryoshka levels; give them explicitly")
    if len(set(gs)) != len(gs):
        raise ValueError(f"--granularities: duplicate values in {gs}")
    for g in gs:
        try:
            model.resolve_granularity(g)
        except ValueError as e:
            raise ValueError(f"--granularities: {g} is not valid for {args.model}: {e}") from None
    return sorted(gs, reverse=True)


def _create_optimizer(args: argparse.Namespace, model) -> torch.optim.Optimizer:
    """timm's optimiser from the flags: weight decay on every parameter of two or more dimensions (the patch,
    position and [CLS] embeddings included), none on 1-D ones or the SSM's A_log, D, dt_bias."""
    return create_optimizer_v2(model, **optimizer_kwargs(cfg=args))


def _create_scheduler(args: argparse.Namespace, optimizer, updates_per_epoch: int):
    """timm's scheduler from the flags (None for ``--sched none``) and the number of epochs to run."""
    if args.sched == "none":
        return None, args.epochs
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=False), updates_per_epoch=updates_per_epoch
    )
    # timm adds a --warmup-prefix warm-up (a float flag) to the epochs and floors the updates to whole epochs;
    # a partial last epoch is run whole instead (past the schedule's end it holds min_lr).
    if args.sched_on_updates and hasattr(scheduler, "get_cycle_length"):
        num_epochs = scheduler.get_cycle_length() / updates_per_epoch + args.cooldown_epochs
    return scheduler, math.ceil(num_epochs - 1e-9)


# A plateau scheduler's progress (its metric history): kept across a resume. Every other timm schedule is a
# function of the step, rebuilt from this run's flags, as timm's train.py does.
_PLATEAU_PROGRESS = ("best", "num_bad_epochs", "cooldown_counter", "last_epoch", "_last_lr")


def _scheduler_progress(scheduler) -> Dict:
    inner = getattr(scheduler, "lr_scheduler", None)  # timm's PlateauLRScheduler wraps ReduceLROnPlateau
    return {k: getattr(inner, k) for k in _PLATEAU_PROGRESS if hasattr(inner, k)} if inner is not None else {}


def _restore_scheduler_progress(scheduler, progress: Dict) -> None:
    inner = getattr(scheduler, "lr_scheduler", None)
    if inner is None:
        return
    for k, v in (progress or {}).items():
        if k in _PLATEAU_PROGRESS:
            setattr(inner, k, v)


def _schedule_changes(saved: Dict, args: argparse.Namespace, updates_per_epoch: int, saved_updates: Optional[int]):
    """'flag: saved -> now' for the schedule's flags that differ from the resumed run's."""
    now = _plain(vars(args))
    changes = [
        f"--{k.replace('_', '-')}: {saved[k]} -> {now[k]}"
        for k in schedule_flags()
        if k in saved and saved[k] != now[k]
    ]
    if saved_updates is not None and saved_updates != updates_per_epoch:
        changes.append(f"updates per epoch: {saved_updates} -> {updates_per_epoch}")
    return changes


def main(argv: Optional[List[str]] = None) -> Dict[int, Dict[str, float]]:
    """Train from command-line flags; returns the final validation metrics per granularity."""
    args = parse_args(argv)
    info = init_distributed(args.device)
    try:
        with ExitStack() as guards:  # the run folder's lock and the preemption handlers, released in any case
            return _train(args, info, guards)
    finally:
        if info.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _on_main(info: DistInfo, fn: Callable[[], object]) -> None:
    """Run ``fn`` on rank 0 only; a ValueError (or OSError) it raises is raised on every rank as a ValueError."""
    error = None
    if info.is_main:
        try:
            fn()
        except (ValueError, OSError) as e:
            error = str(e)
    error = from_main(error)
    if error:
        raise ValueError(error)


def _train(args: argparse.Namespace, info: DistInfo, guards: ExitStack) -> Dict[int, Dict[str, float]]:
    run = _Run(args, info, guards)
    metrics: Dict[int, Dict[str, float]] = {}
    for epoch in range(run.start_epoch, run.num_epochs):
        metrics = run.epoch(epoch)
    run.finish()
    return metrics


class _Run:
    """One training run. Built in the order below: the run folder and every check before anything is trained,
    the model and data, the optimisation, a resume, the Matryoshka step, the outputs. :meth:`epoch` then trains
    one epoch (:meth:`train_epoch`), validates it (:meth:`validate_epoch`) and checkpoints it (:meth:`end_epoch`)."""

    def __init__(self, args: argparse.Namespace, info: DistInfo, guards: ExitStack):
        self.args, self.info = args, info
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.deterministic:
            torch.use_deterministic_algorithms(True)
        self._open_run_folder()
        self._build_model_and_data()
        _on_main(info, lambda: guards.enter_context(self.lock))
        self._build_optimisation()
        self._resume()
        self._build_step()
        self._start_outputs()
        self._restore_rng_states()
        # SIGTERM (and --preempt-signal): checkpoint at the end of the step and exit 75 (see preemption.py)
        self.preempt = guards.enter_context(
            Preemption(args.preempt_signal, args.preempt_deadline, self.out_dir if info.is_main else None)
        )
        self.trigger = CheckpointTrigger(
            args.checkpoint_interval_steps, args.checkpoint_interval_minutes, self.preempt, info.device
        )
        self.meta = {
            "model": args.model,
            "granularities": self.granularities,
            "model_kwargs": dict(model_kwargs_from_args(args), num_classes=self.num_classes),
        }

    # ---- set-up
    def _open_run_folder(self) -> None:
        """The checkpoint to resume and the run folder, checked (no live run, no other run's files, writable)."""
        args, info = self.args, self.info
        if args.resume == "auto":  # the newest checkpoint of this run folder, or a fresh start
            self.resume_state = from_main(resolve_auto_resume(args.output, args.experiment))
        else:
            self.resume_state = resolve_resume(args.resume) if args.resume else None
        # rank 0's folder on every rank: a default name holds the time, which ranks may read a second apart
        self.out_dir = out_dir = from_main(experiment_dir(args.output, args.experiment, args.model, self.resume_state))
        self.lock = RunLock(out_dir)
        _on_main(info, self.lock.check)  # a live run there is named (taken in __init__, once every check passed)

        def check_folder() -> None:
            """On rank 0 only: the other ranks would list the folder while rank 0's write probe makes and removes it."""
            held = newest_checkpoint(out_dir) or next((p for name, _, p in run_files(out_dir) if name.is_best), None)
            if self.resume_state is None and held is not None:  # a new run would prune and overwrite its files
                raise ValueError(
                    f"--output/--experiment: {out_dir} already holds a run ({held.name}); continue it with "
                    f"--resume {out_dir}, or choose another --experiment"
                )
            check_output_dir(out_dir)  # read-only, no permission, full, a file in the way: reported first

        _on_main(info, check_folder)
        self.log = setup_logging(info.is_main)  # log.txt starts when the folder is made, after every check
        random_seed(args.seed)

    def _build_model_and_data(self) -> None:
        """Classes first (the head size), then the model and loaders; all checks before training starts."""
        args, info = self.args, self.info
        classes = dataset_classes(args.dataset, args.data_dir, args.train_split)
        self.num_classes = num_classes = args.num_classes or len(classes)
        if num_classes < len(classes):
            raise ValueError(f"--num-classes {num_classes} is fewer than the {len(classes)} classes of the data")
        self.model = model = _create_model(args, num_classes)  # same seed on every rank: identical initial weights
        random_seed(args.seed, info.rank)  # per-rank streams for dropout, mixup and augmentation
        self.granularities = granularities = _granularities(args, model)
        self.resumed = None
        if self.resume_state is not None:  # another model or other granularities: refused before anything is loaded
            self.resumed = read_training_state(self.resume_state)
            check_resume_matches(self.resumed, self.resume_state, args.model, model.model_args, granularities)
        if info.is_main:
            check_free_space(self.out_dir, model, args.checkpoint_hist, args.model_ema)
        self.best_g = args.best_granularity if args.best_granularity is not None else granularities[0]
        if self.best_g not in granularities:
            raise ValueError(f"--best-granularity {self.best_g} is not among the trained granularities {granularities}")
        self.micro = micro_batch_size(
            args.batch_size, info.world_size, args.grad_accum_steps, args.matryoshka_mode, len(granularities)
        )
        self.mixup_fn = create_mixup(
            args.mixup,
            args.cutmix,
            args.smoothing,
            num_classes,
            args.mixup_prob,
            args.mixup_switch_prob,
            args.mixup_mode,
        )
        if self.mixup_fn is not None and self.micro % 2:
            raise ValueError(
                f"mixup/cutmix need an even micro-batch; --batch-size {args.batch_size} gives {self.micro}"
            )
        self.data_config = data_config = model_data_config(model, vars(args))
        per_rank = args.batch_size // info.world_size
        self.train_loader = create_train_loader(
            args.dataset,
            args.data_dir,
            args.train_split,
            data_config,
            per_rank,
            args.workers,
            info.distributed,
            seed=args.seed,
            auto_augment=args.aa,
            color_jitter=args.color_jitter,
            color_jitter_prob=args.color_jitter_prob,
            re_prob=args.reprob,
            re_mode=args.remode,
            re_count=args.recount,
            scale=args.scale,
            ratio=args.ratio,
            hflip=args.hflip,
            translate=args.translate,
            skip_corrupt=args.skip_corrupt,
            device=info.device,
            re_max_area=args.re_max_area,
        )
        self.eval_loader = create_eval_loader(
            args.dataset,
            args.data_dir,
            args.val_split,
            data_config,
            args.validation_batch_size or 2 * per_rank,
            args.workers,
            info.distributed,
            skip_corrupt=args.skip_corrupt,
        )
        if list(self.train_loader.classes) != list(self.eval_loader.classes):
            raise ValueError("data: class lists of the train and val splits differ")
        if len(self.train_loader) == 0:
            raise ValueError(f"--batch-size {args.batch_size}: larger than the training set")

    def _build_optimisation(self) -> None:
        args, info = self.args, self.info
        self.model.to(info.device)
        self.optimizer = _create_optimizer(args, self.model)
        self.updates_per_epoch = len(self.train_loader)
        self.scheduler, self.num_epochs = _create_scheduler(args, self.optimizer, self.updates_per_epoch)
        self.amp_dtype = AMP_DTYPES[args.amp_dtype] if args.amp else None
        self.scaler = torch.amp.GradScaler(info.device.type) if self.amp_dtype == torch.float16 else None
        self.ema = ModelEmaV3(self.model, decay=args.model_ema_decay) if args.model_ema else None

    def _resume(self) -> None:
        """The resumed checkpoint's weights, optimiser, schedule position, scaler, EMA and best, when resuming."""
        self.start_epoch, self.start_batch, self.num_updates = 0, 0, 0
        self.best = {"top1": -1.0, "epoch": -1}
        if self.resume_state is None:
            return
        args, info, log = self.args, self.info, self.log
        scheduler, scaler, ema, state = self.scheduler, self.scaler, self.ema, self.resumed
        load_checkpoint(self.model, self.resume_state.parent / state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        changes = _schedule_changes(
            state.get("args") or {}, args, self.updates_per_epoch, state.get("updates_per_epoch")
        )
        if changes:
            log.info("resume: the LR schedule is rebuilt from this run's flags (%s)", "; ".join(changes))
        if scheduler is not None:
            _restore_scheduler_progress(scheduler, state.get("scheduler"))
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.module.load_state_dict(state["ema"])
        elif ema is not None:  # --model-ema added on resume: the average starts from the resumed weights
            ema.set(self.model)
        (self.start_epoch, self.start_batch), self.num_updates = resume_position(state), state["step"]
        best = state.get("best", self.best)
        if info.is_main:  # model_best must be this run's: not one from epochs after the checkpoint
            self.out_dir.mkdir(parents=True, exist_ok=True)
            best = reconcile_best(self.resume_state.parent, self.out_dir, best)
        self.best = from_main(best)
        if scheduler is not None and args.sched_on_updates:
            scheduler.step_update(self.start_epoch * self.updates_per_epoch + self.start_batch)
        elif scheduler is not None:
            scheduler.step(self.start_epoch)
        log.info(
            "resumed from %s: continuing at epoch %d, step %d%s",
            self.resume_state,
            self.start_epoch,
            self.num_updates,
            f" (batch {self.start_batch + 1} of {self.updates_per_epoch})" if self.start_batch else "",
        )

    def _build_step(self) -> None:
        """The model as trained (DDP, torch.compile) and the Matryoshka step over it."""
        args, info, model = self.args, self.info, self.model
        self.train_model = model
        if info.distributed:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[info.device.index] if info.device.type == "cuda" else None
            )
        if args.torchcompile:
            self.train_model = torch.compile(self.train_model, backend=args.torchcompile)
        self.step = MatryoshkaStep(
            self.train_model,
            model,
            self.optimizer,
            build_criterion(self.mixup_fn is not None, args.smoothing),
            self.granularities,
            args.matryoshka_mode,
            args.grad_accum_steps,
            args.clip_grad,
            args.clip_mode,
            self.amp_dtype,
            self.scaler,
            self.mixup_fn,
            info.device.type,
            distill_weight=args.distill_weight if args.distill else 0.0,
            distill_temperature=args.distill_temperature,
            sample_pool=untrained_widths(model, self.granularities),
            num_sampled=args.sample_granularities,
        )

    def _start_outputs(self) -> None:
        """log.txt, the data checks' warnings, the recipe card, args.yaml; the checkpoint writer and summary."""
        args, info, log, out_dir, model = self.args, self.info, self.log, self.out_dir, self.model
        if info.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            attach_log_file(out_dir / "log.txt")
            # the images' channels and statistics against the model's config: one line each, in log.txt too
            channels = data_channels(args.dataset, args.data_dir, args.train_split)
            for line in data_mismatch_warnings(model, self.data_config, channels, args.train_split):
                log.warning("data: %s", line)
            # args.yaml keeps the flags the run was started with; a resume records its own beside them
            resumed_here = self.resume_state is not None and (out_dir / "args.yaml").is_file()
            card = recipe_card(
                args,
                model,
                self.optimizer,
                self.scheduler,
                self.granularities,
                info.world_size,
                self.micro,
                self.updates_per_epoch,
                self.num_epochs,
            )
            for line in card:
                log.info("recipe: %s", line)
            write_args(
                out_dir / (f"args.resumed-epoch{self.start_epoch}.yaml" if resumed_here else "args.yaml"),
                vars(args),
                header=["recipe card:", *card],
            )
        self.saver = CheckpointManager(out_dir, args.checkpoint_hist, enabled=info.is_main)
        self.summary = Summary(
            out_dir, self.granularities, self.resumed.get("summary") if self.resumed is not None else None
        )
        log.info(
            "model %s: %.2fM params, granularities %s (%s mode), global batch %d = %d ranks x %d micro-batch%s, "
            "%d steps/epoch, output %s",
            args.model,
            sum(p.numel() for p in model.parameters()) / 1e6,
            self.granularities,
            args.matryoshka_mode,
            args.batch_size,
            info.world_size,
            self.micro,
            f" x {args.grad_accum_steps} accum" if args.grad_accum_steps > 1 else "",
            self.updates_per_epoch,
            out_dir,
        )

    def _restore_rng_states(self) -> None:
        """Every rank's RNG states and (in-epoch checkpoint) the epoch's loss sums and loader states."""
        args, info = self.args, self.info
        self.partial = (self.resumed or {}).get("partial")
        partial = self.partial
        self.loader_state = partial["loader"][min(info.rank, len(partial["loader"]) - 1)] if partial else None
        if self.resumed is None:
            return
        rngs = self.resumed["rng"]
        if len(rngs) == info.world_size:
            set_rng_state(rngs[info.rank])
        else:  # resumed on another number of ranks: fresh per-rank streams (not bit-exact)
            self.log.warning("resumed on %d ranks, saved on %d: RNG streams reseeded", info.world_size, len(rngs))
            random_seed(args.seed + 1000 * self.start_epoch + self.start_batch, info.rank)
        if self.start_batch and args.workers > 0:
            self.log.warning(
                "resumed inside an epoch with --workers %d: the rest of the epoch has the same images, but "
                "the workers' augmentation draws start afresh (bit-exact only with -j 0)",
                args.workers,
            )

    # ---- checkpoints
    def training_state(self, rows: List[Dict]) -> Dict:
        """Everything a resume needs but the RNGs and the position in the epoch."""
        return {
            "step": self.num_updates,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": _scheduler_progress(self.scheduler),
            "updates_per_epoch": self.updates_per_epoch,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "args": _plain(vars(self.args)),
            "best": self.best,
            "granularities": self.granularities,
            "model": self.args.model,
            "model_args": _plain(self.model.model_args),
            "summary": rows,
        }

    def save_in_epoch(self, epoch: int, batches: int, sums: Dict[int, float], count: int):
        ranks = gather_rank_states({"rng": rng_state(), "loader": self.train_loader.state_dict()})
        state = dict(
            self.training_state(self.summary.rows),
            rng=[r["rng"] for r in ranks],
            partial={"sums": sums, "count": count, "loader": [r["loader"] for r in ranks]},
        )
        path = self.saver.save_mid_epoch(epoch, batches, self.model, state, self.meta)
        barrier()  # complete on disk before any rank goes on (or exits)
        self.trigger.written()
        if self.info.is_main:
            self.log.info("checkpoint %s (epoch %d, batch %d of %d)", path.name, epoch, batches, self.updates_per_epoch)
        return path

    # ---- the epoch loop
    def epoch(self, epoch: int) -> Dict[int, Dict[str, float]]:
        """Train, validate and checkpoint ``epoch``; its validation metrics per granularity."""
        t0 = time.time()
        train_loss = self.train_epoch(epoch)
        metrics, ema_metrics = self.validate_epoch(epoch)
        self.end_epoch(epoch, train_loss, metrics, ema_metrics, t0)
        return metrics

    def train_epoch(self, epoch: int) -> Dict[int, float]:
        """One epoch of Matryoshka steps (the rest of it after an in-epoch checkpoint); the mean train loss per
        granularity. Writes in-epoch checkpoints as the trigger says, and exits on a preemption signal."""
        args, info, log = self.args, self.info, self.log
        updates_per_epoch = self.updates_per_epoch
        self.train_model.train()
        first = self.start_batch if epoch == self.start_epoch else 0
        self.train_loader.set_epoch(epoch, first, self.loader_state if first else None)
        sums = {g: 0.0 for g in self.granularities}
        count = 0
        if first:
            sums, count = {int(g): v for g, v in self.partial["sums"].items()}, self.partial["count"]
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {epoch} (0..{self.num_epochs - 1})",
            disable=not info.is_main or args.no_progress,
            dynamic_ncols=True,
            mininterval=2.0,
            initial=first,
            total=updates_per_epoch,
        )
        for i, (images, targets) in enumerate(bar, start=first):
            images, targets = images.to(info.device, non_blocking=True), targets.to(info.device, non_blocking=True)
            try:
                losses = self.step(images, targets)
            except NonFiniteLossError as e:
                kept = newest_checkpoint(self.out_dir)
                raise TrainingError(
                    f"{e} (epoch {epoch}, step {i + 1}); training stopped, last good checkpoint: "
                    f"{kept or 'none written yet'}"
                ) from None
            self.num_updates += 1
            if self.ema is not None:
                self.ema.update(self.model, step=self.num_updates)
            if self.scheduler is not None:  # the schedule's position (this run's updates per epoch, after a resume too)
                self.scheduler.step_update(num_updates=epoch * updates_per_epoch + i + 1)
            for g, v in losses.items():
                sums[g] += v
            count += 1
            if info.is_main and ((i + 1) % args.log_interval == 0 or i + 1 == updates_per_epoch):
                shown = " ".join(f"g{g}={v:.3f}" for g, v in losses.items())
                lr = self.optimizer.param_groups[0]["lr"]
                bar.set_postfix_str(f"loss {shown} lr {lr:.2e}")
                if bar.disable:
                    log.info("epoch %d step %d/%d: loss %s lr %.2e", epoch, i + 1, updates_per_epoch, shown, lr)
            write, stop = self.trigger.poll(self.num_updates, last=i + 1 == updates_per_epoch)
            if write:
                path = self.save_in_epoch(epoch, i + 1, sums, count)
                if stop or self.trigger.stop_requested():  # a signal during the write: this checkpoint serves
                    self.preempt.checkpoint_written()
                    self.preempt.exit(path)
            self.lock.refresh()
        bar.close()
        return {g: s / max(count, 1) for g, s in sums.items()}

    def validate_epoch(self, epoch: int):
        """Validation at every trained granularity (and of the EMA model); the scheduler's epoch step on the
        metric; the replicas checked for divergence. Returns (metrics, EMA metrics or None)."""
        info = self.info
        metrics = validate(self.model, self.eval_loader, self.granularities, info.device, self.amp_dtype)
        ema_metrics = (
            validate(self.ema.module, self.eval_loader, self.granularities, info.device, self.amp_dtype)
            if self.ema
            else None
        )
        if self.scheduler is not None:
            self.scheduler.step(epoch + 1, metrics[self.best_g]["top1"])
        if info.distributed and not replicas_identical(self.model):
            raise TrainingError(f"epoch {epoch}: DDP replicas diverged (weights differ between ranks)")
        return metrics, ema_metrics

    def end_epoch(self, epoch: int, train_loss: Dict[int, float], metrics: Dict, ema_metrics, t0: float) -> None:
        """The epoch's summary row, the best model, the end-of-epoch checkpoint and log line; then the exit if a
        preemption signal came during validation or the write."""
        info, granularities, best_g = self.info, self.granularities, self.best_g
        lr = self.optimizer.param_groups[0]["lr"]
        row: Dict[str, float] = {"epoch": epoch, "lr": lr, "train_loss": sum(train_loss.values()) / len(train_loss)}
        for g in granularities:
            row[f"train_loss_g{g}"] = train_loss[g]
        for prefix, m in (("eval", metrics), ("ema", ema_metrics)):
            for g in granularities if m else ():
                for key in ("loss", "top1", "top5"):
                    row[f"{prefix}_{key}_g{g}"] = m[g][key]
        row["epoch_time"] = time.time() - t0
        is_best = metrics[best_g]["top1"] > self.best["top1"]
        if is_best:
            self.best = {"top1": metrics[best_g]["top1"], "epoch": epoch, "granularity": best_g}
        # the head's size too when it came from the data (validate.py / retrieval.py rebuild the model from this)
        epoch_meta = dict(self.meta, metrics=metrics)
        state = dict(self.training_state(self.summary.rows + [row]), rng=all_rng_states())
        path = None
        if info.is_main:
            # the best model before the state that names it: a kill in between leaves a state file whose "best"
            # is on disk (resuming replays this epoch and rewrites the same best)
            if is_best:
                ema = self.ema.module if self.ema else None
                self.saver.save_best(self.model, ema, dict(epoch_meta, epoch=epoch), self.data_config)
            path = self.saver.save(epoch, self.model, state, epoch_meta)
            self.summary.add(row)
            self.log.info(
                "epoch %d (0..%d, %.0fs): train loss %s | val top-1 %s | top-5 %s%s",
                epoch,
                self.num_epochs - 1,
                row["epoch_time"],
                _fmt(train_loss, "{:.3f}"),
                _fmt({g: m["top1"] for g, m in metrics.items()}),
                _fmt({g: m["top5"] for g, m in metrics.items()}),
                " (best)" if is_best else "",
            )
        barrier()
        self.trigger.written()
        if epoch + 1 < self.num_epochs and self.trigger.stop_requested():  # a signal during validation or the write
            self.preempt.checkpoint_written()
            self.preempt.exit(path)

    def finish(self) -> None:
        if self.info.distributed:
            self.log.info("DDP: replicas identical after training (%d ranks)", self.info.world_size)
        self.log.info(
            "done: best val top-1 %.2f%% at g=%s (epoch %d); outputs in %s",
            self.best["top1"],
            self.best_g,
            self.best["epoch"],
            self.out_dir,
        )


def _fmt(values: Dict[int, float], f: str = "{:.2f}") -> str:
    return " ".join(f"g{g}:{f.format(v)}" for g, v in values.items())


def _plain(d: Dict) -> Dict:
    """args as weights-only-loadable plain values."""
    out = {}
    for k, v in d.items():
        if isinstance(v, (list, tuple)):
            v = list(v)
        elif isinstance(v, dict):  # --model-kwargs
            v = _plain(v)
        elif not isinstance(v, (int, float, str, bool, type(None))):
            v = str(v)
        out[k] = v
    return out
