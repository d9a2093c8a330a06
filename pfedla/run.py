"""Entry point: ``python -m pfedla.run [+experiment=NAME] [overrides]`` (Hydra; ``-m`` sweeps).

``run(cfg, run_dir)`` does the work and is what tests call through Hydra's compose API.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import traceback
import warnings
from contextlib import nullcontext
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from pfedla.assembly import assemble
from pfedla.checkpointing import AtomicCheckpointIO, RoundCheckpoint, load_checkpoint
from pfedla.compatibility import check_resume_compatible
from pfedla.config import CONF_DIR  # importing it registers the schemas with Hydra's ConfigStore
from pfedla.datasets import FederatedData
from pfedla.distributed import FederatedDDPStrategy, launch_rank, restored_process_state
from pfedla.errors import ConfigError
from pfedla.outputs import build_summary, write_json
from pfedla.search import objective_value
from pfedla.server import FederatedModule
from pfedla.timing import timing_summary
from pfedla.unseen import evaluate_unseen
from pfedla.viz.callbacks import Figures, PartitionFiles, RoundProgress
from pfedla.viz.wandb_logger import finish, make_wandb_logger

log = logging.getLogger("pfedla")


def quiet_third_parties() -> None:
    """Lightning's start-up lines (accelerators found, a product tip, "fit stopped") say nothing a run's
    own lines do not; its warnings and errors still show."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)


def setup(cfg: DictConfig, federation: FederatedData | None = None) -> FederatedModule:
    """The run's FederatedModule, around its parts (``assembly.assemble``: raises ConfigError before anything
    trains; ``federation``: the clients' data as built elsewhere, a deployed server's)."""
    return FederatedModule(assemble(cfg, federation), cfg)


def is_distributed(cfg: DictConfig) -> bool:
    tc = cfg.trainer
    return tc.strategy == "ddp" or tc.devices * tc.num_nodes > 1


def make_trainer(cfg: DictConfig, run_dir: Path, wandb_logger=None, figures: bool = True) -> L.Trainer:
    callbacks = [RoundCheckpoint(run_dir / "checkpoints" / "last.ckpt", cfg.checkpoint.every)]
    if figures:
        title = f"{cfg.dataset.name} / {cfg.partition.name} partition"
        if cfg.partition.feature != "none":
            title += f" x {cfg.partition.groups} {cfg.partition.feature} groups"
        callbacks += [PartitionFiles(run_dir, title, wandb_logger), Figures(run_dir, cfg.viz.every, wandb_logger)]
    if cfg.trainer.progress_bar:
        callbacks.append(RoundProgress())
    strategy = "auto"
    if is_distributed(cfg):  # K ranks split each round's clients (pfedla/distributed.py)
        strategy = FederatedDDPStrategy(OmegaConf.to_container(cfg, resolve=True), run_dir)
    return L.Trainer(
        max_epochs=cfg.federation.rounds,
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes,
        strategy=strategy,
        use_distributed_sampler=False,  # the one "batch" per round is a placeholder, not data
        # metrics.csv is written by FederatedModule from its checkpointed history, whatever the logger
        logger=[wandb_logger] if wandb_logger is not None else False,
        callbacks=callbacks,
        log_every_n_steps=1,
        enable_progress_bar=False,  # RoundProgress: Lightning's bar would count one step per epoch
        enable_model_summary=False,
        enable_checkpointing=False,  # RoundCheckpoint writes checkpoints/last.ckpt
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=run_dir,
        plugins=[AtomicCheckpointIO()],
    )


def resume_checkpoint(resume) -> Path | None:
    """``resume`` is a run dir (its checkpoints/last.ckpt) or a checkpoint file; None starts fresh."""
    if resume is None:
        return None
    path = Path(resume)
    checkpoint = path / "checkpoints" / "last.ckpt" if path.is_dir() else path
    if not checkpoint.is_file():
        raise ConfigError(f"resume={resume}: no checkpoint at {checkpoint}; pass a run dir with checkpoints/last.ckpt")
    return checkpoint


def ensure_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"  # several ranks may probe at once
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"output dir {run_dir} is not writable ({err.strerror}); pick another with hydra.run.dir=<dir>"
        ) from None


def run_dir_for(cfg: DictConfig, hydra_dir: Path) -> Path:
    """A resumed run continues in its own run dir; a new run uses Hydra's."""
    if cfg.resume is None:
        return hydra_dir
    path = Path(cfg.resume)
    return path if path.is_dir() else path.parent.parent


def run(cfg: DictConfig, run_dir: str | Path, module: FederatedModule | None = None) -> dict:
    """Run one experiment into ``run_dir``; returns the summary written to ``summary.json``.

    ``module`` (from ``setup(cfg)``) may be passed in to observe or instrument it.
    """
    run_dir = Path(run_dir)
    quiet_third_parties()
    checkpoint = resume_checkpoint(cfg.resume)
    if checkpoint is not None:  # before anything is loaded or written
        check_resume_compatible(load_checkpoint(checkpoint)["pfedla_config"], OmegaConf.to_container(cfg, resolve=True))
    module = setup(cfg) if module is None else module
    resolved = OmegaConf.to_container(cfg, resolve=True)  # with trainer.devices=auto made a number by setup
    module.run_dir = run_dir
    ensure_writable(run_dir)

    started = module.clock_started = time.perf_counter()
    # W&B on rank zero only (a launched rank > 0 knows it is one from its environment, before training)
    use_wandb = cfg.logger.name == "wandb" and launch_rank() == 0
    wandb_logger = make_wandb_logger(cfg, run_dir, resolved) if use_wandb else None
    failed = True
    try:
        trainer = make_trainer(cfg, run_dir, wandb_logger)
        with warnings.catch_warnings(), restored_process_state() if is_distributed(cfg) else nullcontext():
            warnings.filterwarnings("ignore", message=r".*(num_workers|many workers|LightningModule.*optimizer"
                                                      r"|treespec).*")
            trainer.fit(module, ckpt_path=checkpoint)
        failed = False
    finally:
        if wandb_logger is not None:
            finish(wandb_logger, failed)
    wall_seconds = time.perf_counter() - started

    algorithm = module.algorithm
    communication = {"bytes_down": int(algorithm.bytes_down), "bytes_up": int(algorithm.bytes_up)}
    # wall_seconds: the whole run's, over a resume (pfedla/server.py, run_seconds); a checkpoint from before that
    # clock leaves only this process's, and wall_seconds_rounds says how many rounds it covers
    known = module.seconds_before is not None
    summary = build_summary(module.history, resolved, module.seconds_before + wall_seconds if known else wall_seconds,
                            communication, module.rounds_done, module.data.groups)
    summary["wall_seconds_process"] = wall_seconds
    summary["wall_seconds_rounds"] = module.rounds_done - (0 if known else module.resumed_round)
    summary["partition_fingerprint"] = module.data.fingerprint
    summary["rejected_updates"] = module.rejected  # [round, client] pairs with NaN/Inf, never applied
    summary["processes"] = trainer.world_size
    summary["compute"] = compute_summary(module)
    summary["timing"] = timing_summary(module.timings)
    summary["objective"] = objective_value(module.history, cfg.objective)  # what a search maximises (validation)
    summary.update(algorithm.summary_fields(module.data.class_counts(), module.data.groups))
    if not trainer.is_global_zero:
        return summary  # rank zero writes the run's files
    if module.data.client_ids is not None:
        summary["clients"] = module.data.ids  # partition ids of the training federation's clients
    if module.unseen is not None and not module.stopped_by_signal:
        started_unseen = time.perf_counter()
        summary["unseen"] = evaluate_unseen(module, module.unseen)
        summary["unseen"]["wall_seconds"] = time.perf_counter() - started_unseen
    algorithm.write_artifacts(run_dir)
    if module.stopped_by_signal:
        summary["stopped_by_signal"] = module.stopped_by_signal
        log.warning("stopped by signal %d after round %d; continue with resume=%s",
                    module.stopped_by_signal, summary["rounds"], run_dir)
    write_json(run_dir / "summary.json", summary)
    log.info("%s in %.1fs -> %s", result_line(summary), wall_seconds, run_dir)
    return summary


def result_line(summary: dict) -> str:
    """``round R: (a) test/acc_mean F final, B at round r (best val); (b) ...``: what exists so far."""
    parts = []
    for score, name, prefix in (("(a)", "", ""), ("(b)", "_adapted", "adapted_")):
        final, best = summary[f"final{name}"], summary[f"best{name}"]
        if final is not None:
            key = f"test/{prefix}acc_mean"
            parts.append(f"{score} {key} {final[key]:.4f} final, {best[key]:.4f} at round {best['round']} (best val)")
    unseen = summary.get("unseen")
    if unseen:
        held_out = f"(a) {unseen['test/acc_mean']:.4f}"
        if "test/adapted_acc_mean" in unseen:
            held_out += f", (b) {unseen['test/adapted_acc_mean']:.4f}"
        parts.append(f"{len(unseen['clients'])} unseen clients: {held_out}")
    return f"round {summary['rounds']}: " + ("; ".join(parts) or "not evaluated yet")


def compute_summary(module: FederatedModule) -> dict:
    """How this process computed: device, intra-op threads, memory format, precision (and peak CUDA memory
    on a GPU)."""
    out = {"device": str(module.device), "threads": module.threads,
           "memory_format": module.compute.format_name, "precision": str(module.cfg.trainer.precision)}
    if module.device.type == "cuda":
        out["peak_cuda_memory_mib"] = round(torch.cuda.max_memory_allocated(module.device) / 2**20, 1)
    return out


def name_wandb_run(cfg: DictConfig, hydra_cfg) -> None:
    """Fill W&B group/tags left null: one group per -m sweep, tags from the Hydra group choices."""
    with open_dict(cfg):
        if cfg.logger.get("group", "unset") is None:
            if hydra_cfg.mode == RunMode.MULTIRUN:
                cfg.logger.group = str(hydra_cfg.sweep.dir)
            else:
                cfg.logger.group = hydra_cfg.runtime.choices.get("experiment") or "single-runs"
        if cfg.logger.get("tags", "unset") is None:
            choices = hydra_cfg.runtime.choices
            cfg.logger.tags = [f"{k}={v}" for k, v in choices.items() if v and not k.startswith("hydra")]


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Runs one experiment; returns its search objective (validation accuracy) for Hydra's Optuna sweeper.
    A failed run returns None, which the sweeper records as a failed trial (NaN would stop the search)."""
    hydra_cfg = HydraConfig.get()
    run_dir = run_dir_for(cfg, Path(hydra_cfg.runtime.output_dir))
    name_wandb_run(cfg, hydra_cfg)
    try:
        summary = run(cfg, run_dir)
    except Exception as err:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            # One failing job must not stop the sweep: record why where the report will look.
            detail = "" if isinstance(err, ConfigError) else "\n" + traceback.format_exc()
            (run_dir / "error.txt").write_text(f"{type(err).__name__}: {err}\n{detail}")
            log.error("job %s failed: %s", hydra_cfg.job.num, err)
            return None  # a search records the trial as failed and goes on
        if not isinstance(err, ConfigError):
            raise
        remove_if_only_hydra_files(Path(hydra_cfg.runtime.output_dir))
        print(f"pfedla: error: {err}", file=sys.stderr)
        sys.exit(2)
    if summary.get("stopped_by_signal"):  # checkpointed and stopped: end the process (and a sweep) too
        sys.exit(128 + summary["stopped_by_signal"])
    return summary["objective"]


def remove_if_only_hydra_files(path: Path) -> None:
    """A run refused at start leaves no run dir behind (Hydra creates it before main runs)."""
    if path.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in path.iterdir()):
        shutil.rmtree(path)


if __name__ == "__main__":
    main()
