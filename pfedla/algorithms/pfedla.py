"""pFedLA and HeurpFedLA (Ma et al., "Layer-wised Model Aggregation for Personalized FL", CVPR 2022).

Round t over the sampled clients S_t (README, "Correctness"), all sends from the
start-of-round state:
  1. theta_bar_i^l = sum_j alpha_i^l[j] theta_j^l          (``begin_round``: one einsum per tensor)
  2. client i trains from exactly theta_bar_i -> theta_i'; Delta_i = theta_i' - theta_bar_i
  3. hypernetwork step on (psi_i, v_i) with grad_outputs = -Delta_i, then SGD descent (``end_round``)
  4. theta_i <- theta_i'                                    (``end_round``, after all have reported)
HeurpFedLA(k): the k layers with the largest self-weight alpha_i^l[i] are one-hot on i: kept local,
neither sent nor uploaded, and (through ``torch.where``) their heads get no gradient.
``algorithm.alpha`` = uniform | self | similarity replaces the learned alpha by a fixed one
(pfedla/algorithms/fixed_alpha.py): the ablations that say what learning alpha is worth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from pfedla.algorithms.alpha_stats import alpha_statistics
from pfedla.algorithms.base import Algorithm, Options, RoundContext, options
from pfedla.algorithms.fixed_alpha import FIXED_ALPHAS, fixed_alpha
from pfedla.algorithms.hypernetwork import HEAD_INITS, NORMALISATIONS, OPTIMIZERS, LayerwiseHypernetworks
from pfedla.algorithms.stacked import ClientModel, StackedTensors, Tensors, nbytes
from pfedla.errors import ConfigError, check, choice
from pfedla.models.layers import GROUPINGS, layer_groups
from pfedla.outputs import write_alpha

ALPHA_RULES = ("learned", *FIXED_ALPHAS)


@options("schema_pfedla")
@dataclass
class PFedLAOptions(Options):
    embedding_dim: int = MISSING
    hidden_dim: int = MISSING
    hidden_layers: int = MISSING
    hn_lr: float = MISSING
    hn_momentum: float = MISSING
    hn_optimizer: str = MISSING  # sgd | adam (per-client state either way)
    normalisation: str = MISSING  # relu | softmax
    head_init: str = MISSING  # uniform | random
    grouping: str = MISSING  # module | tensor | block
    k: int = MISSING  # HeurpFedLA: layers kept local (one-hot on self) per client per round; 0 = pFedLA
    alpha: str = MISSING  # learned (the hypernetworks) | uniform | self | similarity (fixed: the ablations)


def aggregate(client_params: Tensors, alpha: torch.Tensor, layers: dict[str, list[str]]) -> Tensors:
    """theta_bar_s^l = sum_j alpha[s, l, j] * theta_j^l for every tensor of every layer l (Eq. 3)."""
    out = {}
    for l, names in enumerate(layers.values()):
        for name in names:
            theta = client_params[name]
            out[name] = torch.einsum("sj,j...->s...", alpha[:, l].to(theta.dtype), theta)
    return out


class PFedLA(Algorithm):
    @staticmethod
    def check_config(cfg) -> None:
        check(cfg.hn_lr > 0, "algorithm.hn_lr", cfg.hn_lr, "must be > 0", "0.005")
        check(0 <= cfg.hn_momentum < 1, "algorithm.hn_momentum", cfg.hn_momentum, "must be in [0, 1)", "0.0")
        for key in ("embedding_dim", "hidden_dim"):
            check(cfg[key] >= 1, f"algorithm.{key}", cfg[key], "must be >= 1", "100")
        check(cfg.hidden_layers >= 1, "algorithm.hidden_layers", cfg.hidden_layers, "must be >= 1", "3")
        choice("algorithm.hn_optimizer", cfg.hn_optimizer, OPTIMIZERS)
        choice("algorithm.normalisation", cfg.normalisation, NORMALISATIONS)
        choice("algorithm.head_init", cfg.head_init, HEAD_INITS)
        choice("algorithm.grouping", cfg.grouping, GROUPINGS)
        choice("algorithm.alpha", cfg.alpha, ALPHA_RULES)
        if cfg.alpha != "learned":
            check(cfg.k == 0, "algorithm.k", cfg.k, f"must be 0 with a fixed algorithm.alpha={cfg.alpha} (HeurpFedLA "
                  "picks its local layers by the learned self-weights)", "0")
        if cfg.name == "heurpfedla":
            check(cfg.k >= 1, "algorithm.k", cfg.k, "must be >= 1 for heurpfedla (k=0 is pfedla)", "2")
        else:
            check(cfg.k >= 0, "algorithm.k", cfg.k, "must be >= 0", "0")

    def __init__(self, model: nn.Module, num_clients: int, cfg):
        super().__init__(model, num_clients)
        self.layers = layer_groups(model, cfg.grouping)
        self.layer_names = list(self.layers)
        if not 0 <= cfg.k < len(self.layers):
            raise ConfigError(
                f"algorithm.k={cfg.k} must be in [0, {len(self.layers)}) for {len(self.layers)} layers "
                f"({', '.join(self.layer_names)}); e.g. algorithm.k=1"
            )
        self.k = cfg.k
        self.hn_settings = (len(self.layers), cfg.embedding_dim, cfg.hidden_dim, cfg.hidden_layers,
                            cfg.normalisation, cfg.head_init, cfg.hn_lr, cfg.hn_momentum, cfg.hn_optimizer)
        self.alpha_rule = cfg.alpha
        self.hypernetworks = None
        if self.alpha_rule == "learned":
            self.hypernetworks = LayerwiseHypernetworks(num_clients, *self.hn_settings)
        else:  # a buffer, so a checkpoint holds it (similarity's is set from the label counts before round 1)
            self.register_buffer("fixed_alpha", fixed_alpha(self.alpha_rule, num_clients, len(self.layers)))
        # HeurpFedLA: a layer a client keeps local is not uploaded, so the server's copy of it goes
        # stale while the client's own copy (client_params) moves on. pFedLA uploads every parameter (its
        # BatchNorm statistics, never mixed, stay on the client: kept).
        self.uploaded_params = None
        if self.k:
            self.uploaded_params = StackedTensors({n: t.clone() for n, t in self.client_params.as_dict().items()})
        self.register_buffer("bytes_saved", torch.zeros((), dtype=torch.int64))

    @property
    def server_view(self) -> Tensors:
        """theta_j as the server knows them: what aggregation mixes."""
        return (self.client_params if self.uploaded_params is None else self.uploaded_params).as_dict()

    # --- round ------------------------------------------------------------------------------------
    def begin_round(self, ctx: RoundContext) -> None:
        super().begin_round(ctx)
        sampled = ctx.sampled
        clients = torch.tensor(sampled, device=self.device)
        self._clients, self._row = clients, {c: r for r, c in enumerate(sampled)}
        if self.alpha_rule == "similarity" and not getattr(self, "_similarity_known", False):
            raise RuntimeError("alpha=similarity needs set_label_counts(train_counts) before the first round")
        self._hn_rows = None if self.hypernetworks is None else self.hypernetworks.rows(clients)
        alpha, self._retained = self._effective_alpha(self._alpha(clients, self._hn_rows), clients)
        self.round_alpha = alpha.detach()
        self._aggregated = aggregate(self.server_view, alpha, self.layers)  # graph kept for end_round
        self._delta = {n: torch.zeros_like(t) for n, t in self._aggregated.items()}
        self._trained: dict[int, ClientModel] = {}

    def model_for(self, i: int) -> ClientModel:
        r = self._row[i]
        params = {n: self._aggregated[n][r].detach().clone() for n in self.param_names}
        for name in self._local_names(r):
            params[name] = self.client_params[name][i].clone()
        sent = self._sent_names(r)
        self.count_bytes(down=nbytes(params, sent))
        self.bytes_saved += nbytes(params, self._local_names(r))
        # BatchNorm statistics are never mixed: the client's own, they stay on it (kept), as its retained layers
        return ClientModel(params, {n: t.clone() for n, t in self.client_buffers.row(i).items()},
                           frozenset([*self._local_names(r), *self.buffer_names]))

    def receive(self, i: int, sent: ClientModel, trained: ClientModel, num_samples: int) -> None:
        r = self._row[i]
        for name in self._sent_names(r):
            self._delta[name][r] = trained.params[name] - sent.params[name]
        self.count_bytes(up=nbytes(trained.params, self._sent_names(r)))
        self.bytes_saved += nbytes(trained.params, self._local_names(r))
        self._trained[i] = trained

    def end_round(self) -> None:
        reported = torch.tensor([self._row[i] for i in self._trained], dtype=torch.long, device=self._clients.device)
        if len(reported) and self.hypernetworks is not None:
            # Step 3. Descent on <theta_bar_i(psi_i), -Delta_i> changes psi by +lr J^T Delta_i, which moves
            # theta_bar_i by lr J J^T Delta_i: a positive inner product with Delta_i, i.e. towards theta_i'.
            names = list(self._aggregated)
            grads = torch.autograd.grad(
                [self._aggregated[n] for n in names],
                list(self._hn_rows.values()),
                grad_outputs=[-self._delta[n] for n in names],
                allow_unused=True,
            )
            self.hypernetworks.step(
                self._clients[reported],
                {k: (g[reported] if g is not None else None) for k, g in zip(self._hn_rows, grads)},
            )
        for i, trained in self._trained.items():  # step 4
            self.client_params.set_row(i, trained.params)
            self.client_buffers.set_row(i, trained.buffers)
            if self.uploaded_params is not None:
                self.uploaded_params.set_row(i, trained.params, self._sent_names(self._row[i]))
        del self._aggregated, self._delta, self._hn_rows, self._trained

    # --- evaluation and inspection ----------------------------------------------------------------
    @torch.no_grad()
    def personalized_models(self, clients: list[int]) -> list[ClientModel]:
        """theta_bar_i from the current hypernetworks and models: what client i would be sent now
        (HeurpFedLA: its retained layers are its own). Its local adaptation is score (b)."""
        out = []
        for chunk in torch.tensor(clients, device=self.device).split(64):  # bounded memory
            alpha, retained = self._effective_alpha(self._alpha(chunk), chunk)
            aggregated = aggregate(self.server_view, alpha, self.layers)
            for r, i in enumerate(chunk.tolist()):
                params, kept = {n: aggregated[n][r] for n in self.param_names}, set(self.buffer_names)
                for l, layer in enumerate(self.layer_names):
                    if retained is not None and retained[r, l]:
                        params.update({n: self.client_params[n][i] for n in self.layers[layer]})
                        kept.update(self.layers[layer])
                out.append(ClientModel(params, self.client_buffers.row(i), frozenset(kept)))
        return out

    def personalized_model(self, i: int) -> ClientModel:
        return self.personalized_models([i])[0]

    def personalize_new_client(self, initial: ClientModel, fit, rounds: int, generator: torch.Generator
                               ) -> ClientModel:
        """pFedLA's recipe for a new client: its own new hypernetwork and embedding (initialised as in
        training, from ``generator``), fitted with the trained clients' models fixed. Each local round runs
        the training round for this one client: theta_bar = sum_j alpha[j] theta_j over the N trained models
        and its own (column N, starting from ``initial``), local training from theta_bar, a hypernetwork
        step on <theta_bar, -Delta>, its own model <- the trained one. HeurpFedLA keeps its k layers of
        largest self-weight its own, as in training. A fixed alpha keeps its rule over the N + 1 models
        (``uniform``: 1/(N+1) each; ``self``: its own alone, Local's recipe) and has no hypernetwork to fit."""
        if self.hypernetworks is None:
            return self._new_client_fixed_alpha(initial, fit, rounds)
        n, me = self.num_clients, torch.tensor([self.num_clients], device=self.device)
        hypernetwork = LayerwiseHypernetworks(n + 1, *self.hn_settings, generator=generator).to(self.device)
        pool = {name: torch.cat([t, initial.params[name][None].to(t.dtype)]) for name, t in self.server_view.items()}
        buffers = initial.buffers
        for r in range(1, rounds + 1):
            rows = hypernetwork.rows(me)
            alpha, retained = self._effective_alpha(hypernetwork.alpha(me, rows), me)
            aggregated = aggregate(pool, alpha, self.layers)
            sent = self._new_client_model(aggregated, pool, retained, buffers)
            trained = fit(sent, r)
            names = list(aggregated)
            grads = torch.autograd.grad([aggregated[k] for k in names], list(rows.values()), allow_unused=True,
                                        grad_outputs=[-(trained.params[k] - sent.params[k])[None] for k in names])
            hypernetwork.step(me, dict(zip(rows, grads)))
            with torch.no_grad():
                for name in pool:
                    pool[name][n] = trained.params[name]
            buffers = trained.buffers
        with torch.no_grad():
            alpha, retained = self._effective_alpha(hypernetwork.alpha(me), me)
            return self._new_client_model(aggregate(pool, alpha, self.layers), pool, retained, buffers)

    def _new_client_fixed_alpha(self, initial: ClientModel, fit, rounds: int) -> ClientModel:
        n = self.num_clients
        rule = fixed_alpha(self.alpha_rule, n + 1, len(self.layers))[n:].to(self.device)  # [1, L, N+1]
        pool = {name: torch.cat([t, initial.params[name][None].to(t.dtype)]) for name, t in self.server_view.items()}
        buffers = initial.buffers
        for r in range(1, rounds + 1):
            trained = fit(self._new_client_model(aggregate(pool, rule, self.layers), pool, None, buffers), r)
            for name in pool:
                pool[name][n] = trained.params[name]
            buffers = trained.buffers
        return self._new_client_model(aggregate(pool, rule, self.layers), pool, None, buffers)

    @classmethod
    def has_new_client_recipe(cls, cfg) -> bool:
        return cfg.alpha != "similarity"  # a new client's label counts are not known to the server

    def set_label_counts(self, train_counts) -> None:
        if self.alpha_rule == "similarity":
            self.fixed_alpha.copy_(fixed_alpha("similarity", self.num_clients, len(self.layers), train_counts))
            self._similarity_known = True

    def round_metrics(self) -> dict[str, float]:
        """Per layer, the share of clients whose alpha (before HeurpFedLA keeps layers local) gives their peers
        nothing: with relu normalisation such a client's heads get no gradient for that layer, so it stays
        collapsed (tests/test_pfedla.py)."""
        own = []
        for clients in torch.arange(self.num_clients, device=self.device).split(256):
            with torch.no_grad():
                alpha = self._alpha(clients)
            peers = alpha.clone()
            peers[torch.arange(len(clients)), :, clients] = 0
            own.append((peers == 0).all(-1))  # [S, L]
        collapsed = torch.cat(own).double().mean(0)
        return {f"alpha/collapsed_{layer}": float(collapsed[l]) for l, layer in enumerate(self.layer_names)}

    def _alpha(self, clients: torch.Tensor, rows: dict | None = None) -> torch.Tensor:
        """alpha [S, L, N] of these clients: the hypernetworks' (from ``rows`` when given) or the fixed rule's."""
        if self.hypernetworks is None:
            return self.fixed_alpha[clients]
        return self.hypernetworks.alpha(clients, rows)

    def _new_client_model(self, aggregated: Tensors, pool: Tensors, retained, buffers) -> ClientModel:
        """The new client's theta_bar (row 0 of ``aggregated``), its retained layers (HeurpFedLA) its own."""
        params = {k: aggregated[k][0].detach().clone() for k in self.param_names}
        for l, layer in enumerate(self.layer_names):
            if retained is not None and retained[0, l]:
                params.update({k: pool[k][-1].clone() for k in self.layers[layer]})
        return ClientModel(params, buffers)

    def summary_fields(self, class_counts, groups=None) -> dict:
        alpha, _ = self.current_alpha()
        return {"bytes_saved": int(self.bytes_saved),
                "alpha_stats": alpha_statistics(alpha.cpu().numpy(), self.layer_names, class_counts, groups)}

    def write_artifacts(self, run_dir) -> None:
        alpha, retained = self.current_alpha()
        write_alpha(Path(run_dir) / "alpha.npz", alpha.cpu().numpy(), retained.cpu().numpy(), self.layer_names)

    @torch.no_grad()
    def current_alpha(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha [N, L, N], retained [N, L]) that every client would get now; rows i -> columns j."""
        alphas, retains = [], []
        for clients in torch.arange(self.num_clients, device=self.device).split(256):  # bounded memory
            alpha, retained = self._effective_alpha(self._alpha(clients), clients)
            alphas.append(alpha)
            retains.append(torch.zeros(alpha.shape[:2], dtype=torch.bool, device=alpha.device)
                           if retained is None else retained)
        return torch.cat(alphas), torch.cat(retains)

    # --- HeurpFedLA -------------------------------------------------------------------------------
    def _effective_alpha(self, alpha: torch.Tensor, clients: torch.Tensor):
        """One-hot (on the client itself) for its k layers of largest self-weight; None mask for pFedLA."""
        if not self.k:
            return alpha, None
        self_weight = alpha[torch.arange(len(clients)), :, clients]  # [S, L]
        top = torch.argsort(self_weight.detach(), dim=1, descending=True, stable=True)[:, : self.k]
        retained = torch.zeros_like(self_weight, dtype=torch.bool).scatter_(1, top, True)
        own = F.one_hot(clients, alpha.shape[-1]).to(alpha.dtype)[:, None, :].expand_as(alpha)
        return torch.where(retained[..., None], own, alpha), retained

    def _local_names(self, r: int) -> list[str]:
        if self._retained is None:
            return []
        return [n for l, layer in enumerate(self.layer_names) if self._retained[r, l] for n in self.layers[layer]]

    def _sent_names(self, r: int) -> list[str]:
        local = set(self._local_names(r))
        return [n for n in self.param_names if n not in local]
