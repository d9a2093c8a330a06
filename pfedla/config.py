"""Typed schemas for the Hydra config.

The YAML files under ``conf/`` hold the default values; these dataclasses hold the *types and the
set of allowed keys*, so a typo (``federation.num_client=5``) or a bad type (``seed=abc``) fails at
composition with the key named. Group options whose keys differ (pFedLA has a hypernetwork, FedAvg
has none) each get their own schema, registered under ``<group>/schema_<name>`` and pulled into the
option's YAML through its defaults list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from pfedla.compute import devices_or_one

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # the YAML files: defaults, groups, experiments


@dataclass
class FederationConfig:
    num_clients: int = MISSING
    rounds: int = MISSING
    participation: float = MISSING  # fraction of clients sampled each round, in (0, 1]
    eval_every: int = MISSING
    adapt_every: int = MISSING  # rounds between scores (b) (local adaptation; evaluated too); 0: never
    unseen_fraction: float = MISSING  # of the clients, held out of every training round (pfedla/unseen.py)
    unseen_rounds: int = MISSING  # local rounds in which each method personalizes for a held-out client


@dataclass
class ClientConfig:
    epochs: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    momentum: float = MISSING
    weight_decay: float = MISSING
    on_nonfinite: str = MISSING  # reject (skip that client's update this round) | fail
    engine: str = MISSING  # loop (reference) | vmap (a round's clients trained together with torch.func)


@dataclass
class TrainerConfig:
    accelerator: str = MISSING
    devices: Any = MISSING  # processes per node: K (> 1 splits each round's clients across them) | auto
    num_nodes: int = MISSING
    strategy: str = MISSING  # auto: one process unless devices * num_nodes > 1 | ddp: always the multi-process path
    progress_bar: bool = MISSING
    memory_format: str = MISSING  # auto | contiguous | channels_last (pfedla/compute.py)
    eval_batch_size: int = MISSING  # samples per forward pass at evaluation
    precision: str = MISSING  # "32" | bf16 (autocast of forward passes; pfedla/compute.py)


@dataclass
class CheckpointConfig:
    every: int = MISSING  # rounds between checkpoints/last.ckpt writes


@dataclass
class DatasetConfig:
    _target_: str = MISSING  # the pfedla.datasets.sources.Source class; it takes the keys below it names
    name: str = MISSING
    fraction: float = MISSING  # seeded stratified subset of the pooled data, in (0, 1]
    # the dataset's own test images: pooled with its train images | held_out as the clients' test splits |
    # unused, never read (searches); pfedla/datasets/federated.py
    test_images: str = "pooled"
    # option-specific keys: set in that option's YAML, None elsewhere
    root: Optional[str] = None  # torchvision datasets
    download: Optional[bool] = None  # torchvision datasets
    num_classes: Optional[int] = None  # synthetic
    samples_per_class: Optional[int] = None  # synthetic
    image_size: Optional[int] = None  # synthetic
    noise: Optional[float] = None  # synthetic
    test_samples_per_class: Optional[int] = None  # synthetic: a test set of its own
    split: Optional[str] = None  # emnist


@dataclass
class PartitionConfig:
    _target_: str = MISSING  # the pfedla.datasets.partition.LabelSkew class; it takes the keys below it names
    name: str = MISSING
    test_fraction: float = MISSING  # of each client's share
    val_fraction: float = MISSING  # of each client's share minus its test split
    min_samples: int = MISSING  # per client, train + val + test
    alpha: Optional[float] = None  # dirichlet
    max_tries: Optional[int] = None  # dirichlet: resampling attempts before the deterministic top-up
    classes_per_client: Optional[int] = None  # pathological
    # feature skew (pfedla/datasets/feature_skew.py) and quantity skew, on top of any label partition
    feature: str = "none"  # none | rotation | invert | noise | blur | colour: each client group's input transform
    groups: int = 4  # client groups (group 0 keeps its images as they are); used when feature != none
    group_of: Optional[list[int]] = None  # each client's group; None: a seeded shuffle dealt round-robin
    feature_level: Optional[float] = None  # noise std / blur sigma per group step; None: 0.5 / 1.0
    quantity: str = "none"  # none | lognormal | zipf: client sizes drawn from that heavy-tailed law
    quantity_scale: float = 1.0  # lognormal sigma | zipf exponent


@dataclass
class ModelConfig:
    _target_: str = MISSING  # the nn.Module class (pfedla/models/build.py)
    name: str = MISSING
    channels: list[int] = MISSING
    hidden: list[int] = MISSING
    batch_norm: bool = MISSING


@dataclass
class LoggerConfig:
    name: str = MISSING
    # wandb only
    project: Optional[str] = None
    entity: Optional[str] = None
    mode: Optional[str] = None  # online | offline | disabled; None: WANDB_MODE, else offline
    group: Optional[str] = None  # None: the sweep dir for -m, else the experiment name
    tags: Optional[list[str]] = None  # None: the Hydra group choices
    init_timeout: Optional[float] = None


@dataclass
class VizConfig:
    every: int = MISSING  # rounds between heatmaps (pFedLA); the last round always gets them


@dataclass
class Config:
    seed: int = MISSING
    objective: str = MISSING  # the score a search maximises on validation: personalized (a) or adapted (b)
    federation: FederationConfig = field(default_factory=FederationConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    viz: VizConfig = field(default_factory=VizConfig)
    dataset: Any = MISSING
    partition: Any = MISSING
    model: Any = MISSING
    algorithm: Any = MISSING
    logger: Any = MISSING
    resume: Any = None


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    cs.store(group="dataset", name="schema", node=DatasetConfig)
    cs.store(group="partition", name="schema", node=PartitionConfig)
    cs.store(group="model", name="schema", node=ModelConfig)
    cs.store(group="logger", name="schema", node=LoggerConfig)


register_configs()
# ${devices_or_one:${trainer.devices}}: a process count before a run starts (conf/hydra/launcher/slurm.yaml)
OmegaConf.register_new_resolver("devices_or_one", devices_or_one, replace=True)
