"""train.py's main loop: set up (flags checked before any training), epochs of Matryoshka steps, validation
at every trained granularity, checkpoints, outputs."""
from __future__ import annotations

import argparse
import math
import random
import time
from typing import Dict, List, Optional

import numpy as np
import torch
import yaml
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from tqdm import tqdm

from ..checkpoint import build_model, load_checkpoint
from ..data import create_eval_loader, dataset_classes, create_mixup, create_train_loader, model_data_config
from .checkpointing import (
    CheckpointManager, check_free_space, check_output_dir, check_resume_matches, latest_state_file,
    read_training_state, reconcile_best, resolve_resume, set_rng_state,
)
from .config import parse_args
from .distributed import DistInfo, all_rng_states, barrier, from_main, init_distributed, replicas_identical
from .evaluate import validate
from .matryoshka import MatryoshkaStep, NonFiniteLossError, build_criterion, micro_batch_size, untrained_widths
from .outputs import Summary, attach_log_file, experiment_dir, setup_logging, write_args

__all__ = ["main", "TrainingError"]

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class TrainingError(RuntimeError):
    """Training stopped (e.g. a non-finite loss); the message says where and what was kept."""


def _model_kwargs(args: argparse.Namespace) -> Dict:
    kwargs = dict(drop_rate=args.drop, drop_path_rate=args.drop_path, proj_drop_rate=args.proj_drop)
    for key in ("num_classes", "img_size", "in_chans"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    if args.model_kwargs:
        try:
            extra = yaml.safe_load(args.model_kwargs) if isinstance(args.model_kwargs, str) else args.model_kwargs
        except yaml.YAMLError as e:
            raise ValueError(f"--model-kwargs is not valid YAML ({str(e).splitlines()[0]}): {args.model_kwargs!r}") \
                from None
        if not isinstance(extra, dict):
            raise ValueError(f"--model-kwargs must be a YAML mapping, got {args.model_kwargs!r}")
        bad = [k for k in extra if not (isinstance(k, str) and k.isidentifier())]
        if bad:  # e.g. '{depth:2}', which YAML reads as the key 'depth:2' (timm would drop its None silently)
            raise ValueError(f"--model-kwargs: {bad} are not argument names; write 'name: value' with a space "
                             f"after the colon, e.g. '{{depth: 2}}'")
        kwargs.update(extra)
    return kwargs


def _create_model(args: argparse.Namespace, num_classes: int):
    kwargs = _model_kwargs(args)
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


def _create_scheduler(args: argparse.Namespace, optimizer, updates_per_epoch: int):
    """timm's scheduler from the flags (None for ``--sched none``) and the number of epochs to run."""
    if args.sched == "none":
        return None, args.epochs
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, min_lr=args.min_lr, warmup_lr=args.warmup_lr,
        warmup_epochs=args.warmup_epochs, warmup_prefix=args.warmup_prefix, decay_epochs=args.decay_epochs,
        decay_milestones=args.decay_milestones, decay_rate=args.decay_rate, patience_epochs=args.patience_epochs,
        cooldown_epochs=args.cooldown_epochs, cycle_mul=args.lr_cycle_mul, cycle_decay=args.lr_cycle_decay,
        cycle_limit=args.lr_cycle_limit, k_decay=args.lr_k_decay,
        step_on_epochs=not args.sched_on_updates, updates_per_epoch=updates_per_epoch)
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
    keys = ("epochs", "sched", "sched_on_updates", "lr", "min_lr", "warmup_epochs", "warmup_lr", "warmup_prefix",
            "decay_epochs", "decay_milestones", "decay_rate", "patience_epochs", "cooldown_epochs", "lr_cycle_mul",
            "lr_cycle_decay", "lr_cycle_limit", "lr_k_decay")
    now = _plain(vars(args))
    changes = [f"--{k.replace('_', '-')}: {saved[k]} -> {now[k]}" for k in keys if k in saved and saved[k] != now[k]]
    if saved_updates is not None and saved_updates != updates_per_epoch:
        changes.append(f"updates per epoch: {saved_updates} -> {updates_per_epoch}")
    return changes


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def main(argv: Optional[List[str]] = None) -> Dict[int, Dict[str, float]]:
    """Train from command-line flags; returns the final validation metrics per granularity."""
    args = parse_args(argv)
    info = init_distributed(args.device)
    try:
        return _train(args, info)
    finally:
        if info.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def _pair_ok(pair, low: float, high: float) -> bool:
    return pair is None or (len(pair) == 2 and low < pair[0] <= pair[1] <= high)


def _check_flags(args: argparse.Namespace) -> None:
    """ValueError naming the first flag whose value cannot make a sensible run (NaN fails every check)."""
    unit = lambda v: 0 <= v <= 1  # noqa: E731
    for flag, value, ok, valid in (
        ("--epochs", args.epochs, args.epochs > 0, "positive"),
        ("--log-interval", args.log_interval, args.log_interval >= 1, "at least 1"),
        ("--smoothing", args.smoothing, 0 <= args.smoothing < 1, "in [0, 1)"),
        ("--threads", args.threads, args.threads is None or args.threads >= 0, "0 (torch's default) or more"),
        ("--validation-batch-size", args.validation_batch_size,
         args.validation_batch_size is None or args.validation_batch_size > 0, "positive"),
        ("--warmup-epochs", args.warmup_epochs, args.warmup_epochs >= 0, "0 or more"),
        ("--drop", args.drop, 0 <= args.drop < 1, "in [0, 1)"),
        ("--drop-path", args.drop_path, 0 <= args.drop_path < 1, "in [0, 1)"),
        ("--proj-drop", args.proj_drop, 0 <= args.proj_drop < 1, "in [0, 1)"),
        # timm's plateau scheduler steps once per epoch, on the validation top-1, and ends its warm-up only at a
        # whole epoch (after a fractional one the LR stays at a warm-up value for good)
        ("--sched-on-updates", "on", args.sched != "plateau" or not args.sched_on_updates,
         "off (--no-sched-on-updates) with --sched plateau"),
        ("--warmup-epochs", args.warmup_epochs, args.sched != "plateau" or float(args.warmup_epochs).is_integer(),
         "a whole number with --sched plateau"),
        ("--lr", args.lr, _finite(args.lr) and args.lr > 0, "a positive finite number"),
        ("--min-lr", args.min_lr, _finite(args.min_lr) and 0 <= args.min_lr <= args.lr, "in [0, --lr]"),
        ("--warmup-lr", args.warmup_lr, _finite(args.warmup_lr) and args.warmup_lr >= 0, "0 or more"),
        ("--weight-decay", args.weight_decay, _finite(args.weight_decay) and args.weight_decay >= 0, "0 or more"),
        ("--momentum", args.momentum, unit(args.momentum), "in [0, 1]"),
        ("--clip-grad", args.clip_grad, not math.isnan(args.clip_grad), "a number (0 or less: no clipping)"),
        ("--model-ema-decay", args.model_ema_decay, unit(args.model_ema_decay), "in [0, 1]"),
        ("--decay-epochs", args.decay_epochs, args.decay_epochs is None or args.decay_epochs > 0, "positive"),
        ("--decay-rate", args.decay_rate, _finite(args.decay_rate) and args.decay_rate > 0, "positive"),
        ("--patience-epochs", args.patience_epochs, args.patience_epochs >= 0, "0 or more"),
        ("--cooldown-epochs", args.cooldown_epochs, args.cooldown_epochs >= 0, "0 or more"),
        ("--lr-cycle-mul", args.lr_cycle_mul, _finite(args.lr_cycle_mul) and args.lr_cycle_mul > 0, "positive"),
        ("--lr-cycle-decay", args.lr_cycle_decay, _finite(args.lr_cycle_decay) and args.lr_cycle_decay > 0,
         "positive"),
        ("--lr-cycle-limit", args.lr_cycle_limit, args.lr_cycle_limit >= 1, "at least 1"),
        ("--lr-k-decay", args.lr_k_decay, _finite(args.lr_k_decay) and args.lr_k_decay > 0, "positive"),
        ("--checkpoint-hist", args.checkpoint_hist, args.checkpoint_hist >= 1, "at least 1"),
        ("--workers", args.workers, args.workers >= 0, "0 or more"),
        ("--num-classes", args.num_classes, args.num_classes is None or args.num_classes >= 1,
         "at least 1 (a classifier is trained)"),
        ("--mixup", args.mixup, args.mixup >= 0, "0 (off) or more"),
        ("--cutmix", args.cutmix, args.cutmix >= 0, "0 (off) or more"),
        ("--mixup-prob", args.mixup_prob, unit(args.mixup_prob), "in [0, 1]"),
        ("--mixup-switch-prob", args.mixup_switch_prob, unit(args.mixup_switch_prob), "in [0, 1]"),
        ("--reprob", args.reprob, unit(args.reprob), "in [0, 1]"),
        ("--recount", args.recount, args.recount >= 1, "at least 1"),
        ("--hflip", args.hflip, unit(args.hflip), "in [0, 1]"),
        ("--color-jitter", args.color_jitter, args.color_jitter >= 0, "0 (off) or more"),
        ("--color-jitter-prob", args.color_jitter_prob, args.color_jitter_prob is None or unit(args.color_jitter_prob),
         "in [0, 1]"),
        ("--scale", args.scale, _pair_ok(args.scale, 0, 1), "two numbers 0 < min <= max <= 1"),
        ("--ratio", args.ratio, _pair_ok(args.ratio, 0, math.inf), "two numbers 0 < min <= max"),
        ("--translate", args.translate, args.translate >= 0, "0 or more"),
    ):
        if not ok:
            raise ValueError(f"{flag} must be {valid}, got {value}")
    if args.torchcompile:
        backends = torch._dynamo.list_backends()
        if args.torchcompile not in backends:
            raise ValueError(f"--torchcompile must be one of {backends}, got {args.torchcompile!r}")


def _train(args: argparse.Namespace, info: DistInfo) -> Dict[int, Dict[str, float]]:
    _check_flags(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    resume_state = resolve_resume(args.resume) if args.resume else None
    # rank 0's folder on every rank: a default name holds the time, which ranks may read a second apart
    out_dir = from_main(experiment_dir(args.output, args.experiment, args.model, resume_state))
    held = latest_state_file(out_dir) or next(iter(sorted(out_dir.glob("model_best*.safetensors"))), None)
    if resume_state is None and held is not None:  # a new run there would prune and overwrite that run's files
        raise ValueError(f"--output/--experiment: {out_dir} already holds a run ({held.name}); continue it with "
                         f"--resume {out_dir}, or choose another --experiment")
    if info.is_main:  # only rank 0 writes; read-only, no permission, full, a file in the way: reported first
        check_output_dir(out_dir)
    log = setup_logging(info.is_main)  # log.txt starts when the folder is made, after every check
    _seed_everything(args.seed)

    # ---- data: classes first (the head size), then the model and loaders; all checks before training starts
    classes = dataset_classes(args.dataset, args.data_dir, args.train_split)
    num_classes = args.num_classes or len(classes)
    if num_classes < len(classes):
        raise ValueError(f"--num-classes {num_classes} is fewer than the {len(classes)} classes of the data")
    model = _create_model(args, num_classes)  # same seed on every rank: identical initial weights
    _seed_everything(args.seed + info.rank)   # per-rank streams for dropout, mixup and augmentation
    granularities = _granularities(args, model)
    resumed = None
    if resume_state is not None:  # another model or other granularities: refused before anything is loaded
        resumed = read_training_state(resume_state)
        check_resume_matches(resumed, resume_state, args.model, model.model_args, granularities)
    if info.is_main:
        check_free_space(out_dir, model, args.checkpoint_hist, args.model_ema)
    best_g = args.best_granularity if args.best_granularity is not None else granularities[0]
    if best_g not in granularities:
        raise ValueError(f"--best-granularity {best_g} is not among the trained granularities {granularities}")
    micro = micro_batch_size(args.batch_size, info.world_size, args.grad_accum_steps, args.matryoshka_mode,
                             len(granularities))
    mixup_fn = create_mixup(args.mixup, args.cutmix, args.smoothing, num_classes, args.mixup_prob,
                            args.mixup_switch_prob, args.mixup_mode)
    if mixup_fn is not None and micro % 2:
        raise ValueError(f"mixup/cutmix need an even micro-batch; --batch-size {args.batch_size} gives {micro}")
    data_config = model_data_config(model, vars(args))
    per_rank = args.batch_size // info.world_size
    train_loader = create_train_loader(
        args.dataset, args.data_dir, args.train_split, data_config, per_rank, args.workers, info.distributed,
        seed=args.seed, auto_augment=args.aa, color_jitter=args.color_jitter, color_jitter_prob=args.color_jitter_prob,
        re_prob=args.reprob, re_mode=args.remode, re_count=args.recount, scale=args.scale, ratio=args.ratio,
        hflip=args.hflip, translate=args.translate, skip_corrupt=args.skip_corrupt, device=info.device)
    eval_loader = create_eval_loader(args.dataset, args.data_dir, args.val_split, data_config,
                                     args.validation_batch_size or 2 * per_rank, args.workers, info.distributed,
                                     skip_corrupt=args.skip_corrupt)
    if list(train_loader.classes) != list(eval_loader.classes):
        raise ValueError("data: class lists of the train and val splits differ")
    if len(train_loader) == 0:
        raise ValueError(f"--batch-size {args.batch_size}: larger than the training set")

    # ---- optimisation
    model.to(info.device)
    if args.opt.lower().split("_")[-1] not in list_optimizers():  # timm's names, e.g. lookahead_adamw
        raise ValueError(f"--opt must be one of timm's optimizers (timm.optim.list_optimizers(), e.g. adamw, sgd, "
                         f"lamb), got {args.opt!r}")
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum, **({"eps": args.opt_eps} if args.opt_eps else {}),
                                    **({"betas": tuple(args.opt_betas)} if args.opt_betas else {}))
    updates_per_epoch = len(train_loader)
    scheduler, num_epochs = _create_scheduler(args, optimizer, updates_per_epoch)
    amp_dtype = AMP_DTYPES[args.amp_dtype] if args.amp else None
    scaler = torch.amp.GradScaler(info.device.type) if amp_dtype == torch.float16 else None
    ema = ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None

    start_epoch, num_updates, best = 0, 0, {"top1": -1.0, "epoch": -1}
    if resume_state is not None:
        state = resumed
        load_checkpoint(model, resume_state.parent / state["weights"])
        optimizer.load_state_dict(state["optimizer"])
        changes = _schedule_changes(state.get("args") or {}, args, updates_per_epoch, state.get("updates_per_epoch"))
        if changes:
            log.info("resume: the LR schedule is rebuilt from this run's flags (%s)", "; ".join(changes))
        if scheduler is not None:
            _restore_scheduler_progress(scheduler, state.get("scheduler"))
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.module.load_state_dict(state["ema"])
        elif ema is not None:  # --model-ema added on resume: the average starts from the resumed weights
            ema.set(model)
        start_epoch, num_updates, best = state["epoch"] + 1, state["step"], state.get("best", best)
        if info.is_main:  # model_best must be this run's: not one from epochs after the checkpoint
            out_dir.mkdir(parents=True, exist_ok=True)
            best = reconcile_best(resume_state.parent, out_dir, best)
        best = from_main(best)
        if scheduler is not None and args.sched_on_updates:
            scheduler.step_update(start_epoch * updates_per_epoch)
        elif scheduler is not None:
            scheduler.step(start_epoch)
        log.info("resumed from %s: continuing at epoch %d, step %d", resume_state, start_epoch, num_updates)

    train_model = model
    if info.distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if args.torchcompile:
        train_model = torch.compile(train_model, backend=args.torchcompile)
    step = MatryoshkaStep(train_model, model, optimizer, build_criterion(mixup_fn is not None, args.smoothing),
                          granularities, args.matryoshka_mode, args.grad_accum_steps, args.clip_grad,
                          args.clip_mode, amp_dtype, scaler, mixup_fn, info.device.type,
                          distill_weight=args.distill_weight if args.distill else 0.0,
                          distill_temperature=args.distill_temperature,
                          sample_pool=untrained_widths(model, granularities), num_sampled=args.sample_granularities)

    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        attach_log_file(out_dir / "log.txt")
        # args.yaml keeps the flags the run was started with; a resume records its own beside them
        resumed_here = resume_state is not None and (out_dir / "args.yaml").is_file()
        write_args(out_dir / (f"args.resumed-epoch{start_epoch}.yaml" if resumed_here else "args.yaml"), vars(args))
    saver = CheckpointManager(out_dir, args.checkpoint_hist, enabled=info.is_main)
    summary = Summary(out_dir, granularities, state.get("summary") if start_epoch else None)
    log.info("model %s: %.2fM params, granularities %s (%s mode), global batch %d = %d ranks x %d micro-batch%s, "
             "%d steps/epoch, output %s", args.model, sum(p.numel() for p in model.parameters()) / 1e6,
             granularities, args.matryoshka_mode, args.batch_size, info.world_size, micro,
             f" x {args.grad_accum_steps} accum" if args.grad_accum_steps > 1 else "", updates_per_epoch, out_dir)
    if start_epoch > 0:
        rngs = state["rng"]
        if len(rngs) == info.world_size:
            set_rng_state(rngs[info.rank])
        else:  # resumed on another number of ranks: fresh per-rank streams (not bit-exact)
            log.warning("resumed on %d ranks, saved on %d: RNG streams reseeded", info.world_size, len(rngs))
            _seed_everything(args.seed + info.rank + 1000 * start_epoch)

    metrics: Dict[int, Dict[str, float]] = {}
    for epoch in range(start_epoch, num_epochs):
        t0 = time.time()
        train_model.train()
        train_loader.set_epoch(epoch)
        sums = {g: 0.0 for g in granularities}
        count = 0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{num_epochs}", disable=not info.is_main or args.no_progress,
                   dynamic_ncols=True, mininterval=2.0)
        for i, (images, targets) in enumerate(bar):
            images, targets = images.to(info.device, non_blocking=True), targets.to(info.device, non_blocking=True)
            try:
                losses = step(images, targets)
            except NonFiniteLossError as e:
                kept = latest_state_file(out_dir)
                raise TrainingError(f"{e} (epoch {epoch + 1}, step {i + 1}); training stopped, last good checkpoint: "
                                    f"{kept or 'none written yet'}") from None
            num_updates += 1
            if ema is not None:
                ema.update(model, step=num_updates)
            if scheduler is not None:  # the schedule's position (this run's updates per epoch, also after a resume)
                scheduler.step_update(num_updates=epoch * updates_per_epoch + i + 1)
            for g, v in losses.items():
                sums[g] += v
            count += 1
            if info.is_main and ((i + 1) % args.log_interval == 0 or i + 1 == len(train_loader)):
                shown = " ".join(f"g{g}={v:.3f}" for g, v in losses.items())
                lr = optimizer.param_groups[0]["lr"]
                bar.set_postfix_str(f"loss {shown} lr {lr:.2e}")
                if bar.disable:
                    log.info("epoch %d step %d/%d: loss %s lr %.2e", epoch + 1, i + 1, len(train_loader), shown, lr)
        bar.close()
        train_loss = {g: s / max(count, 1) for g, s in sums.items()}
        metrics = validate(model, eval_loader, granularities, info.device, amp_dtype)
        ema_metrics = validate(ema.module, eval_loader, granularities, info.device, amp_dtype) if ema else None
        if scheduler is not None:
            scheduler.step(epoch + 1, metrics[best_g]["top1"])
        if info.distributed and not replicas_identical(model):
            raise TrainingError(f"epoch {epoch + 1}: DDP replicas diverged (weights differ between ranks)")

        lr = optimizer.param_groups[0]["lr"]
        row: Dict[str, float] = {"epoch": epoch, "lr": lr,
                                 "train_loss": sum(train_loss.values()) / len(train_loss)}
        for g in granularities:
            row[f"train_loss_g{g}"] = train_loss[g]
        for prefix, m in (("eval", metrics), ("ema", ema_metrics)):
            for g in granularities if m else ():
                for key in ("loss", "top1", "top5"):
                    row[f"{prefix}_{key}_g{g}"] = m[g][key]
        row["epoch_time"] = time.time() - t0
        is_best = metrics[best_g]["top1"] > best["top1"]
        if is_best:
            best = {"top1": metrics[best_g]["top1"], "epoch": epoch, "granularity": best_g}
        # the head's size too when it came from the data (validate.py / retrieval.py rebuild the model from this)
        meta = {"model": args.model, "granularities": granularities, "metrics": metrics,
                "model_kwargs": dict(_model_kwargs(args), num_classes=num_classes)}
        state = {"step": num_updates, "optimizer": optimizer.state_dict(), "scheduler": _scheduler_progress(scheduler),
                 "updates_per_epoch": updates_per_epoch,
                 "scaler": scaler.state_dict() if scaler is not None else None,
                 "ema": ema.module.state_dict() if ema is not None else None, "rng": all_rng_states(),
                 "args": _plain(vars(args)), "best": best, "granularities": granularities,
                 "model": args.model, "model_args": _plain(model.model_args),
                 "summary": summary.rows + [row]}
        if info.is_main:
            # the best model before the state that names it: a kill in between leaves a state file whose "best"
            # is on disk (resuming replays this epoch and rewrites the same best)
            if is_best:
                saver.save_best(model, ema.module if ema else None, dict(meta, epoch=epoch))
            saver.save(epoch, model, state, meta)
            summary.add(row)
            log.info("epoch %d/%d (%.0fs): train loss %s | val top-1 %s | top-5 %s%s", epoch + 1, num_epochs,
                     row["epoch_time"], _fmt(train_loss, "{:.3f}"), _fmt({g: m["top1"] for g, m in metrics.items()}),
                     _fmt({g: m["top5"] for g, m in metrics.items()}), " (best)" if is_best else "")
        barrier()
    if info.distributed:
        log.info("DDP: replicas identical after training (%d ranks)", info.world_size)
    log.info("done: best val top-1 %.2f%% at g=%s (epoch %d); outputs in %s", best["top1"], best_g,
             best["epoch"] + 1, out_dir)
    return metrics


def _fmt(values: Dict[int, float], f: str = "{:.2f}") -> str:
    return " ".join(f"g{g}:{f.format(v)}" for g, v in values.items())


def _plain(d: Dict) -> Dict:
    """args as weights-only-loadable plain values."""
    out = {}
    for k, v in d.items():
        if isinstance(v, (list, tuple)):
            v = list(v)
        elif not isinstance(v, (int, float, str, bool, type(None))):
            v = str(v)
        out[k] = v
    return out

