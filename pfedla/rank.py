"""Entry point of a launched rank (``python -m pfedla.rank``): run the config rank 0 composed, writing nothing.

Rank 0 (``python -m pfedla.run trainer.devices=K``) starts ranks 1..K-1 this way through
``pfedla.distributed.RankLauncher``, which hands them the resolved config and the run dir in the
environment. Kept apart from pfedla/distributed.py, so the strategy module does not import the runner.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

from omegaconf import OmegaConf

from pfedla.distributed import ENV_CONFIG, ENV_RUN_DIR


def exit_with_parent(parent_pid: int) -> None:
    """A launched rank must not outlive rank 0 (it would wait in a collective until the timeout)."""

    def watch():
        while True:
            time.sleep(2)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="pfedla-parent-watch").start()


def main() -> None:
    from pfedla.run import run

    if ENV_CONFIG not in os.environ:
        sys.exit("pfedla.rank is started by `python -m pfedla.run trainer.devices=K`, not by hand")
    logging.basicConfig(level=logging.WARNING, format=f"[rank {os.environ.get('LOCAL_RANK')}] %(message)s")
    exit_with_parent(int(os.environ.get("PFEDLA_PARENT_PID", os.getppid())))
    run(OmegaConf.create(json.loads(os.environ[ENV_CONFIG])), os.environ[ENV_RUN_DIR])


if __name__ == "__main__":
    main()
