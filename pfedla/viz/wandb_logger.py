"""W&B through Lightning's WandbLogger: offline unless asked, never hanging a run, always finished."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("pfedla")
MODES = ("online", "offline", "disabled")


def resolve_mode(configured: str | None) -> str:
    """``logger.mode`` if set, else ``WANDB_MODE``, else offline (a first run never blocks or asks for a key)."""
    mode = configured or os.environ.get("WANDB_MODE") or "offline"
    return "disabled" if mode in ("dryrun-disabled", "disabled") else ("offline" if mode == "dryrun" else mode)


def make_wandb_logger(cfg, run_dir: Path, config: dict):
    """A started WandbLogger; online falls back to offline when the server is unreachable."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    lc = cfg.logger
    mode = resolve_mode(lc.mode)
    save_dir = Path(os.environ.get("WANDB_DIR") or run_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    kwargs = dict(
        project=lc.project, entity=lc.entity, group=lc.group, tags=list(lc.tags or []), name=run_dir.name,
        save_dir=str(save_dir), config=config, reinit="finish_previous",
    )
    # silent: W&B prints nothing on the console (run.py says where the run is); its errors still raise
    try:
        logger = _started(WandbLogger(mode=mode, settings=wandb.Settings(init_timeout=lc.init_timeout, silent=True),
                                      **kwargs))
    except Exception as err:  # wandb raises CommError / UsageError / timeouts when online fails
        if mode != "online":
            raise
        log.warning("W&B online init failed (%s); logging offline instead (`wandb sync` uploads later)", err)
        logger = _started(WandbLogger(mode="offline", settings=wandb.Settings(silent=True), **kwargs))
    if mode != "disabled":
        where = logger.experiment.dir if mode == "online" else Path(logger.experiment.dir).parent
        log.info("W&B %s run: %s%s", mode, where, "" if mode == "online" else f" (upload: wandb sync {where})")
    return logger


def _started(logger):
    """Start the run now (an unreachable server fails here, not mid-training). Lightning always passes
    ``anonymous=None``, which this W&B version warns about on every run; it means nothing, so drop it."""
    logger._wandb_init.pop("anonymous", None)
    logger.experiment  # noqa: B018
    return logger


def finish(logger, failed: bool) -> None:
    import wandb

    if logger is not None and wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)
