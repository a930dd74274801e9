"""Scoring a query against a training-data index: gradient cosine, DataInf, representation similarity.

Built once per index and kept in memory, so each query costs one pass over a matrix per method:
- **Cosine**: per-layer-normalised gradient cosine summed over checkpoints. The query gradient is taken at the
  served (final) adapter for every checkpoint, so the sum folds into one matrix: q . sum_c T_c.
- **DataInf** (Kwon et al., 2024): per layer l, the inverse Hessian is approximated in closed form from the
  training gradients, H_l^-1 v ~ (1/(n lam_l)) sum_i (v - (g_i.v)/(lam_l + |g_i|^2) g_i), lam_l = 0.1 mean
  |g_i|^2. That is H_l^-1 v = (v - M_l v) / lam_l with M_l = G_l^T diag(1/(lam_l + |g_i|^2)) G_l / n, a small
  d_l x d_l matrix computed once per index, so scoring every row k (g_k . H_l^-1 v) is one pass per checkpoint.
  Positive = the row lowers the query's loss (helps the answer).
- **Gauss-Newton** (projected, per layer; the LoGra/TRAK recipe on the count sketch): per layer l the empirical
  Fisher of the per-layer-normalised training gradients pooled over the checkpoints, F = G^T G / n + lam I (lam =
  `GN_DAMPING` times the mean eigenvalue), and the score is the cosine in the F^-1 metric,
  q^T F^-1 g / (|q|_F^-1 |g|_F^-1), averaged over layers and summed over checkpoints. Whitening by F^-1/2 removes
  the directions every row shares (the common "what any answer looks like" gradient), which dominate the plain
  cosine. W = F^-1/2 is a small d_l x d_l matrix per layer and the same for every checkpoint, so the whitened rows
  fold over checkpoints into one matrix and a query is one product, as the cosine's.
- **TracIn** (Pruthi et al., 2020, checkpoint form): the per-layer-normalised cosine of each checkpoint's rows with
  the query's gradient taken at *that checkpoint's* weights, summed over checkpoints. A trained adapter has
  already learned what its rows taught, so at its weights the answer's gradient is mostly about what is still
  unknown (new words); at an early checkpoint it still points along what the rows were teaching. Needs one query
  gradient per checkpoint (the index's `adapter` checkpoints); the matrices are kept per checkpoint.
- **Representation**: cosine of mean final hidden states, centred on the index mean (hidden states share a
  large common direction that would otherwise make every row look alike).
Matrices are kept in bfloat16 (half the memory traffic of fp32; CPUs with bf16 units do it at full speed).
"""

from __future__ import annotations

import torch

from tally.influence.index import InfluenceIndex, layer_normalised

DATAINF_DAMPING = 0.1
GN_DAMPING = 0.1


def inverse_sqrt_fisher(g: torch.Tensor, damping: float = GN_DAMPING) -> torch.Tensor:
    """(F + lam I)^-1/2 for F = g^T g / n, lam = `damping` x the mean eigenvalue of F (symmetric, via eigh)."""
    f = (g.T.float() @ g.float()).double() / max(1, g.shape[0])
    lam = damping * float(torch.trace(f)) / max(1, f.shape[0]) + 1e-12
    values, vectors = torch.linalg.eigh(f)
    return ((vectors * (values.clamp_min(0) + lam).rsqrt()) @ vectors.T).float()


class IndexScorer:
    def __init__(self, index: InfluenceIndex) -> None:
        self.index = index
        self.slices = index.layer_slices()
        self.checkpoints = [c["name"] for c in index.meta["checkpoints"] if c["name"] in index.tensors]
        folded = sum(layer_normalised(index.tensors[c], self.slices) for c in self.checkpoints)
        self._cosine = torch.as_tensor(folded).to(torch.bfloat16).contiguous()
        self._datainf: list[tuple[torch.Tensor, list[tuple[torch.Tensor, float]]]] = []
        self._gn: torch.Tensor | None = None  # whitened rows, summed over checkpoints
        self._gn_whiten: list[torch.Tensor] = []  # F^-1/2 per layer
        self._per_checkpoint: dict[str, torch.Tensor] = {}  # TracIn: each checkpoint's layer-normalised rows
        self._hidden: torch.Tensor | None = None
        self._hidden_mean: torch.Tensor | None = None
        rep = index.meta.get("representation")
        if rep and rep["tensor"] in index.tensors:
            h = index.tensors[rep["tensor"]].float()
            self._hidden_mean = h.mean(dim=0)
            centred = h - self._hidden_mean
            self._hidden = (centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)).contiguous()

    @property
    def rows(self) -> int:
        return int(self._cosine.shape[0])

    @property
    def has_representation(self) -> bool:
        return self._hidden is not None

    def cosine(self, query: torch.Tensor) -> torch.Tensor:
        """(rows,) mean over layers of the per-layer cosine, summed over checkpoints."""
        q = layer_normalised(query.reshape(-1), self.slices).to(torch.bfloat16)
        return (self._cosine @ q).float() / len(self.slices)

    def _prepare_datainf(self) -> None:
        for name in self.checkpoints:
            g = self.index.tensors[name].float()
            per_layer = []
            for off, d in self.slices:
                gl = g[:, off : off + d]
                sq = (gl * gl).sum(dim=1)
                lam = DATAINF_DAMPING * float(sq.mean().clamp_min(1e-20))
                c = 1.0 / (lam + sq)
                per_layer.append(((gl * c.unsqueeze(1)).T @ gl / g.shape[0], lam))
            self._datainf.append((g.to(torch.bfloat16).contiguous(), per_layer))

    def datainf(self, query: torch.Tensor) -> torch.Tensor:
        """(rows,) DataInf influence g_k . H^-1 q summed over layers and checkpoints (larger = more helpful)."""
        if not self._datainf:
            self._prepare_datainf()
        v = query.reshape(-1).float()
        total = torch.zeros(self.rows)
        for g, per_layer in self._datainf:
            u = torch.empty_like(v)
            for (off, d), (m, lam) in zip(self.slices, per_layer, strict=True):
                vl = v[off : off + d]
                u[off : off + d] = (vl - m @ vl) / lam
            total += (g @ u.to(torch.bfloat16)).float()
        return total

    def _prepare_gauss_newton(self) -> None:
        """One Fisher per layer, pooled over the checkpoints' trained rows (candidate rows are not training data);
        each checkpoint's rows whitened by it and normalised per layer, then summed, so a query is one product."""
        live = torch.ones(self.rows, dtype=torch.bool)
        live[self.index.untrained()] = False
        normed = [layer_normalised(self.index.tensors[c], self.slices) for c in self.checkpoints]
        folded = torch.zeros(self.rows, sum(d for _, d in self.slices))
        for off, d in self.slices:
            w = inverse_sqrt_fisher(torch.cat([g[live, off : off + d] for g in normed]))
            for g in normed:
                part = g[:, off : off + d] @ w
                folded[:, off : off + d] += part / part.norm(dim=1, keepdim=True).clamp_min(1e-12)
            self._gn_whiten.append(w)
        self._gn = folded.to(torch.bfloat16).contiguous()

    def whiten(self, query: torch.Tensor) -> torch.Tensor:
        """The query as Gauss-Newton scoring sees it: per layer F^-1/2 q, normalised."""
        if self._gn is None:
            self._prepare_gauss_newton()
        q = layer_normalised(query.reshape(-1), self.slices)
        u = torch.empty_like(q)
        for (off, d), w in zip(self.slices, self._gn_whiten, strict=True):
            part = w @ q[off : off + d]
            u[off : off + d] = part / part.norm().clamp_min(1e-12)
        return u

    def gauss_newton(self, query: torch.Tensor) -> torch.Tensor:
        """(rows,) per-layer cosine in the inverse-Fisher metric, mean over layers, summed over checkpoints."""
        u = self.whiten(query)
        assert self._gn is not None
        return (self._gn @ u.to(torch.bfloat16)).float() / len(self.slices)

    def contrast(self, query: torch.Tensor) -> torch.Tensor:
        """(rows,) the `contrast` method: the contrastive query gradient (see `tally.influence.contrast`) scored by
        Gauss-Newton (whitened per-layer cosine, summed over checkpoints)."""
        return self.gauss_newton(query)

    def tracin(self, queries: dict[str, torch.Tensor]) -> torch.Tensor:
        """(rows,) TracIn: sum over checkpoints of the per-layer cosine of the checkpoint's rows with the query
        gradient taken at that checkpoint (`queries`: checkpoint name -> (dims,); a checkpoint without its own
        query gradient uses `final`'s), mean over layers."""
        if not self._per_checkpoint:
            self._per_checkpoint = {
                c: layer_normalised(self.index.tensors[c], self.slices).to(torch.bfloat16).contiguous()
                for c in self.checkpoints
            }
        total = torch.zeros(self.rows)
        for c, rows in self._per_checkpoint.items():
            q = queries.get(c, queries["final"])
            total += (rows @ layer_normalised(q.reshape(-1), self.slices).to(torch.bfloat16)).float()
        return total / len(self.slices)

    def representation(self, hidden: torch.Tensor) -> torch.Tensor:
        """(rows,) centred cosine between the query's mean hidden state and each row's."""
        if self._hidden is None or self._hidden_mean is None:
            raise ValueError("this index has no representation tensor (train again to add it)")
        q = hidden.reshape(-1).float() - self._hidden_mean
        return self._hidden @ (q / q.norm().clamp_min(1e-12))

    def row_similarity(self, rows: list[int]) -> torch.Tensor:
        """(len(rows), rows) centred representation cosine of the given rows with every row (near-duplicates)."""
        if self._hidden is None:
            raise ValueError("this index has no representation tensor")
        return self._hidden[rows] @ self._hidden.T
