"""pFedHN (Shamsian et al., "Personalized Federated Learning using Hypernetworks", ICML 2021).

One server hypernetwork maps client i's embedding v_i to all of client i's weights,
theta_i = h(v_i; phi). Client i trains from theta_i to theta_i'; the server then descends on
phi and v with grad_outputs = theta_i - theta_i' (the paper's Eq. 5: the gradient of
<theta_i(phi), theta_i - theta_i'> ), so the generated model moves toward the trained one.
The round is synchronous: every client's gradient is taken at the start-of-round hypernetwork and
the round applies their sum, to first order the same as pFedHN's one-client-at-a-time steps. As in
the public recipe, which clips every one-client step's hypernetwork gradient to norm 50, each
client's gradient is clipped to ``hn_max_grad_norm`` before the sum (null: no clipping). Without it
the update grows with the client's local steps: tuned on 15% of the data, it diverged on all of it.
BatchNorm statistics, if any, stay each client's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from omegaconf import MISSING
from torch import nn

from pfedla import optim
from pfedla.algorithms.base import Algorithm, Options, RoundContext, options
from pfedla.algorithms.stacked import ClientModel, nbytes, tensor_key
from pfedla.errors import check


@options("schema_pfedhn")
@dataclass
class PFedHNOptions(Options):
    embedding_dim: Optional[int] = None  # None: 1 + num_clients / 4, as in the public recipe
    hidden_dim: int = MISSING
    hidden_layers: int = MISSING
    hn_lr: float = MISSING
    hn_momentum: float = MISSING
    hn_weight_decay: float = MISSING
    hn_max_grad_norm: Optional[float] = None  # each client's hypernetwork gradient clipped to this norm; None: off


class PFedHN(Algorithm):
    @staticmethod
    def check_config(cfg) -> None:
        check(cfg.hn_lr > 0, "algorithm.hn_lr", cfg.hn_lr, "must be > 0", "0.01")
        check(0 <= cfg.hn_momentum < 1, "algorithm.hn_momentum", cfg.hn_momentum, "must be in [0, 1)", "0.9")
        check(cfg.hn_weight_decay >= 0, "algorithm.hn_weight_decay", cfg.hn_weight_decay, "must be >= 0", "0.001")
        clip = cfg.hn_max_grad_norm
        check(clip is None or clip > 0, "algorithm.hn_max_grad_norm", clip, "must be > 0 or null (no clipping)", "50")
        check(cfg.hidden_dim >= 1, "algorithm.hidden_dim", cfg.hidden_dim, "must be >= 1", "100")
        check(cfg.hidden_layers >= 0, "algorithm.hidden_layers", cfg.hidden_layers, "must be >= 0", "3")
        emb = cfg.embedding_dim
        check(emb is None or emb >= 1, "algorithm.embedding_dim", emb, "must be >= 1 or null (1 + N/4)", "null")

    def __init__(self, model: nn.Module, num_clients: int, cfg):
        super().__init__(model, num_clients)
        embedding_dim = cfg.embedding_dim or int(1 + num_clients / 4)  # the public recipe's default
        self.lr, self.momentum, self.weight_decay = cfg.hn_lr, cfg.hn_momentum, cfg.hn_weight_decay
        self.max_grad_norm = cfg.get("hn_max_grad_norm")
        self.embeddings = nn.Embedding(num_clients, embedding_dim)
        body: list[nn.Module] = [nn.Linear(embedding_dim, cfg.hidden_dim)]
        for _ in range(cfg.hidden_layers):  # the public recipe's n_hidden
            body += [nn.ReLU(), nn.Linear(cfg.hidden_dim, cfg.hidden_dim)]
        self.body = nn.Sequential(*body)
        self.shapes = {n: p.shape for n, p in model.named_parameters()}
        heads = {tensor_key(n): nn.Linear(cfg.hidden_dim, s.numel()) for n, s in self.shapes.items()}
        self.heads = nn.ModuleDict(heads)
        if self.momentum:  # SGD state as buffers, so checkpoints carry it
            for name, p in list(self.named_parameters()):
                self.register_buffer(tensor_key("momentum." + name), torch.zeros_like(p))

    def generate(self, clients: torch.Tensor) -> dict[str, torch.Tensor]:
        """theta for each of ``clients``: ``{name: Tensor[S, *shape]}``."""
        return self.generate_from(self.embeddings(clients))

    def generate_from(self, embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        """theta for each row of ``embeddings`` [S, embedding_dim]."""
        h = self.body(embeddings)
        return {n: self.heads[tensor_key(n)](h).view(len(embeddings), *s) for n, s in self.shapes.items()}

    def personalize_new_client(self, initial: ClientModel, fit, rounds: int, generator: torch.Generator
                               ) -> ClientModel:
        """pFedHN's recipe for a new client (the paper's generalization experiment): the hypernetwork stays
        frozen and only a new embedding is trained, each local round by the same objective and optimizer
        settings as in training (hn_lr, momentum, weight decay, the gradient clipped to hn_max_grad_norm)."""
        device = self.device
        embedding = torch.randn(1, self.embeddings.embedding_dim, generator=generator).to(device)  # as nn.Embedding
        velocity = torch.zeros_like(embedding) if self.momentum else None
        buffers = initial.buffers
        for r in range(1, rounds + 1):
            leaf = embedding.detach().requires_grad_(True)
            generated = self.generate_from(leaf)
            sent = ClientModel({n: t[0].detach().clone() for n, t in generated.items()}, buffers)
            trained = fit(sent, r)
            names = list(generated)
            (grad,) = torch.autograd.grad([generated[n][0] for n in names], [leaf],
                                          grad_outputs=[sent.params[n] - trained.params[n] for n in names])
            if self.max_grad_norm is not None:
                grad = grad * torch.clamp(self.max_grad_norm / (torch.linalg.vector_norm(grad) + 1e-6), max=1.0)
            with torch.no_grad():
                optim.sgd(embedding, grad, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                          velocity=velocity)
            buffers = trained.buffers
        with torch.no_grad():
            return ClientModel({n: t[0] for n, t in self.generate_from(embedding).items()}, buffers)

    def begin_round(self, ctx: RoundContext) -> None:
        super().begin_round(ctx)
        sampled = ctx.sampled
        self._clients = torch.tensor(sampled, device=self.device)
        self._row = {c: r for r, c in enumerate(sampled)}
        self._generated = self.generate(self._clients)  # graph kept for end_round
        self._grad_outputs = {n: torch.zeros_like(t) for n, t in self._generated.items()}
        self._trained: dict[int, ClientModel] = {}

    def model_for(self, i: int) -> ClientModel:
        params = {n: t[self._row[i]].detach().clone() for n, t in self._generated.items()}
        self.count_bytes(down=nbytes(params))
        # BatchNorm statistics are not generated: the client's own, they stay on it (kept)
        return ClientModel(params, {n: t.clone() for n, t in self.client_buffers.row(i).items()},
                           frozenset(self.buffer_names))

    def receive(self, i: int, sent: ClientModel, trained: ClientModel, num_samples: int) -> None:
        for n in self._generated:
            self._grad_outputs[n][self._row[i]] = sent.params[n] - trained.params[n]  # theta_i - theta_i'
        self.count_bytes(up=nbytes(trained.params))
        self._trained[i] = trained

    def round_gradient(self) -> list[torch.Tensor | None]:
        """The round's hypernetwork gradient (None: a parameter nothing depends on): the sum over reporting
        clients of d <theta_i(phi), theta_i - theta_i'> / d phi, each clipped to norm ``max_grad_norm``
        (torch.nn.utils.clip_grad_norm_'s rule) when set. Rejected clients have zero grad_outputs."""
        params = [p for _, p in self.named_parameters()]
        names = list(self._generated)
        if self.max_grad_norm is None:
            return list(torch.autograd.grad([self._generated[n] for n in names], params, allow_unused=True,
                                            grad_outputs=[self._grad_outputs[n] for n in names]))
        total: list[torch.Tensor | None] = [None] * len(params)
        for i in self._trained:  # one client's own forward pass: O(clients), not O(clients^2)
            generated = self.generate(torch.tensor([i], device=self.device))
            grads = torch.autograd.grad([generated[n][0] for n in names], params, allow_unused=True,
                                        grad_outputs=[self._grad_outputs[n][self._row[i]] for n in names])
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads if g is not None]))
            scale = torch.clamp(self.max_grad_norm / (norm + 1e-6), max=1.0)
            total = [t if g is None else (g * scale if t is None else t + g * scale) for t, g in zip(total, grads)]
        return total

    def end_round(self) -> None:
        if self._trained:
            params = list(self.named_parameters())  # the hypernetwork's: the base class holds only buffers
            grads = self.round_gradient()
            for (name, p), g in zip(params, grads):
                if g is not None:
                    buffer = getattr(self, tensor_key("momentum." + name)) if self.momentum else None
                    optim.sgd(p, g, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, velocity=buffer)
        for i, trained in self._trained.items():
            self.client_params.set_row(i, trained.params)
            self.client_buffers.set_row(i, trained.buffers)
        del self._generated, self._grad_outputs, self._trained

    @torch.no_grad()
    def personalized_models(self, clients: list[int]) -> list[ClientModel]:
        """pFedHN's personalized model is the one the hypernetwork generates for the client."""
        out = []
        for chunk in torch.tensor(clients, device=self.device).split(256):  # bounded memory
            generated = self.generate(chunk)
            out += [ClientModel({n: t[r] for n, t in generated.items()}, self.client_buffers.row(i),
                                frozenset(self.buffer_names))
                    for r, i in enumerate(chunk.tolist())]
        return out

    def personalized_model(self, i: int) -> ClientModel:
        return self.personalized_models([i])[0]

