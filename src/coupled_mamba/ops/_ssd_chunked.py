"""Chunked coupled SSD in plain PyTorch (docs/MATH.md, section 7): matrix products, any device,
backward by autograd.

Shapes: M modalities, Bt batch, L length, H heads of P channels, G groups of B/C (H = G * Hg),
N state size, T chunk length, c chunks, K keys and Q queries per step.

Both cheap couplings are one chain of the form

    S[t] = abar[t] S[t-1] + sum_k V[t, k] (outer) Bk[t, k]              (scalar abar per head)
    h[t][q] = r[t, q] * abar[t] * S[t-1] + own input;   y[t][q] = h[t][q] Cq[t, q]

- "none" (W = I): every modality is its own chain (M folded into the batch), K = Q = 1, r = 1,
  abar = a, V = dt' x: Mamba-2's SSD.
- rank-one W = (w / M) 11^T ("mean", "sum"): S is the mean state Hbar, abar = w mean_m a_m, the
  keys are the B of all M modalities with values dt' x / M, and modality m reads Hbar[t-1] with
  r_m = a_m / mean_k a_k (so r_m abar = w a_m, the factor of docs/MATH.md section 7). All
  decays are kept in log space (r_m from a log-sum-exp), so no ratio of underflowed
  exponentials appears.

Per chunk the chain is solved as in Mamba-2's state-space dual: the intra-chunk part is a masked
(T Q) x (T K) matrix of C.B products times the segment-sum decay exp(sum_{j=s+1}^t log abar[j]),
multiplied with the values (one batched matmul); each chunk's end state is a matmul of decayed
keys and values; the states are passed from chunk to chunk by a doubling scan over the chunks;
each query then reads its chunk's start state. The own input (s = t) is added pointwise:
dt'[t] (B[t] . C[t]) x[t]. L need not be a multiple of T: the tail is padded with steps that keep
the state (log abar = 0, no input). A general W (alpha, a tensor) takes the reference loop, the
slower exact path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import to_compute_dtype
from ._coupling import resolve_coupling
from ._ssd_checks import heads_of_groups, ssd_skip_and_gate, ssd_step_sizes
from ._ssd_reference import coupled_ssd_ref
from ._torch_scan import _diag_scan


def _segsum(x: torch.Tensor, strict: bool) -> torch.Tensor:
    """x (..., T) -> (..., T, T): out[..., t, s] = sum_{j=s+1}^{t} x[..., j] for s < t (and 0 on
    the diagonal unless ``strict``), -inf elsewhere. Summed per entry, not as a difference of
    cumulative sums, so long chunks of strong decay lose no precision."""
    T = x.shape[-1]
    xx = x[..., :, None].expand(*x.shape, T)  # xx[..., j, s] = x[j]
    below = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(-1)
    seg = xx.masked_fill(~below, 0.0).cumsum(dim=-2)
    keep = below if strict else below | torch.eye(T, dtype=torch.bool, device=x.device)
    return seg.masked_fill(~keep, float("-inf"))


def _chunked_chain(lbar, Kb, V, Cq, logr, s0, T):
    """Read-outs of the chain in the module docstring, without the own input.

    Args:
        lbar: (Bt, L, H) log abar.
        Kb: (Bt, L, K, G, N) keys; V: (Bt, L, K, H, P) values.
        Cq: (Bt, L, Q, G, N) queries; logr: (Bt, L, Q, H) log r, or None for r = 1.
        s0: (Bt, H, P, N) state before step 0.
        T: chunk length.

    Returns:
        Y (Bt, L, Q, H, P): r[t, q] * (abar[t] S[t-1]) Cq[t, q]; and S[L-1] (Bt, H, P, N).
    """
    Bt, L, K, G, N = Kb.shape
    Q, H, P = Cq.shape[2], V.shape[3], V.shape[4]
    Hg = H // G
    c = -(-L // T)
    pad = c * T - L
    if pad:  # steps that keep the state: no decay, no input, no read-out
        lbar = F.pad(lbar, (0, 0, 0, pad))
        Kb, V, Cq = (F.pad(t, (0, 0) * 3 + (0, pad)) for t in (Kb, V, Cq))
        if logr is not None:
            logr = F.pad(logr, (0, 0, 0, 0, 0, pad))
    la = lbar.view(Bt, c, T, H).permute(0, 3, 1, 2)  # (Bt, H, c, T)
    cums = la.cumsum(dim=-1)
    Kb = Kb.view(Bt, c, T, K, G, N)
    V = V.view(Bt, c, T, K, G, Hg, P)
    Cq = Cq.view(Bt, c, T, Q, G, N)

    # Intra-chunk: (T Q) x (T K) scores per (b, c, g, head in group), strictly causal.
    decay = torch.exp(_segsum(la, strict=True))  # (Bt, H, c, T, T)
    decay = decay.view(Bt, G, Hg, c, T, T).permute(0, 3, 1, 2, 4, 5)  # (Bt, c, G, Hg, T, T)
    cb = torch.einsum("bctqgn,bcskgn->bcgtqsk", Cq, Kb)  # (Bt, c, G, T, Q, T, K)
    scores = cb[:, :, :, None] * decay[:, :, :, :, :, None, :, None]  # (Bt,c,G,Hg,T,Q,T,K)
    vals = V.permute(0, 1, 4, 5, 2, 3, 6).reshape(Bt, c, G, Hg, T * K, P)
    y = scores.reshape(Bt, c, G, Hg, T * Q, T * K) @ vals  # (Bt, c, G, Hg, T Q, P)

    # Chunk end states from the chunk's own inputs: sum_s exp(cums[T-1] - cums[s]) V (x) Kb.
    to_end = torch.exp(cums[..., -1:] - cums).view(Bt, G, Hg, c, T)
    kd = Kb.permute(0, 1, 4, 2, 3, 5)[:, :, :, None] * to_end.permute(0, 3, 1, 2, 4)[
        ..., None, None]  # (Bt, c, G, Hg, T, K, N)
    states = vals.transpose(-1, -2) @ kd.reshape(Bt, c, G, Hg, T * K, N)  # (Bt,c,G,Hg,P,N)
    # Pass states across chunks: end[i] = exp(sum of log abar over chunk i) end[i-1] + states[i],
    # end[-1] = s0; a doubling scan over the c chunks (log2 c vectorised steps; Mamba-2's
    # minimal form multiplies by a (c+1) x (c+1) decay matrix instead, quadratic in L).
    whole = torch.exp(cums[..., -1])  # (Bt, H, c)
    states = states.view(Bt, c, H, P, N).permute(0, 2, 3, 4, 1)  # (Bt, H, P, N, c)
    ends = _diag_scan(whole.view(Bt, H, 1, 1, c), states, s0)  # (Bt, H, P, N, c)
    starts = torch.cat([s0[..., None], ends[..., :-1]], dim=-1)  # state before each chunk
    starts = starts.permute(0, 4, 1, 2, 3).reshape(Bt, c, G, Hg, P, N)
    final = ends[..., -1]

    # Each query reads its chunk's start state, decayed to step t: exp(cums[t]) S_start Cq[t].
    from_start = torch.exp(cums).view(Bt, G, Hg, c, T).permute(0, 3, 1, 2, 4)  # (Bt,c,G,Hg,T)
    cs = Cq.permute(0, 1, 4, 2, 3, 5).reshape(Bt, c, G, 1, T * Q, N)
    y_start = (cs @ starts.transpose(-1, -2)).view(Bt, c, G, Hg, T, Q, P)
    y = y.view(Bt, c, G, Hg, T, Q, P) + y_start * from_start[..., None, None]
    y = y.permute(0, 1, 4, 5, 2, 3, 6).reshape(Bt, c * T, Q, H, P)[:, :L]
    if logr is not None:
        y = y * torch.exp(logr[:, :L, :, :, None])
    return y, final


def coupled_ssd_chunked(x, dt, A, B, C, D=None, *, z=None, dt_bias=None, dt_softplus=True,
                        coupling="mean", chunk_size=64, initial_state=None,
                        return_final_state=False):
    """Coupled SSD as chunked matrix products.

    Same signature, shapes and semantics as :func:`coupled_mamba.ops.coupled_ssd_ref`:
    x, z (M, Bt, L, H, P); dt (M, Bt, L, H); A, D, dt_bias (M, H); B, C (M, Bt, L, G, N);
    initial_state (M, Bt, H, P, N). Returns y (M, Bt, L, H, P) [, h[L-1] (M, Bt, H, P, N)].
    """
    M, Bt, L, H, P = x.shape
    cp = resolve_coupling(coupling, M)
    if cp.kind == "general":  # no scalar-decay chain: the exact loop
        return coupled_ssd_ref(x, dt, A, B, C, D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                               coupling=coupling, initial_state=initial_state,
                               return_final_state=return_final_state)
    out_dtype = x.dtype
    work, (x, dt, A, B, C, D, z, dt_bias, initial_state) = to_compute_dtype(
        x, x, dt, A, B, C, D, z, dt_bias, initial_state)
    G, N = B.shape[-2:]
    T = min(chunk_size, L)
    dtp = ssd_step_sizes(dt, dt_bias, dt_softplus)  # (M, Bt, L, H)
    la = dtp * A[:, None, None, :]  # log a, (M, Bt, L, H)
    v = dtp[..., None] * x  # (M, Bt, L, H, P)
    s0 = initial_state if initial_state is not None else x.new_zeros(M, Bt, H, P, N)

    if cp.kind == "diag":  # M independent chains: fold M into the batch
        y, final = _chunked_chain(
            la.reshape(M * Bt, L, H), B.reshape(M * Bt, L, 1, G, N),
            v.reshape(M * Bt, L, 1, H, P), C.reshape(M * Bt, L, 1, G, N), None,
            s0.reshape(M * Bt, H, P, N), T)
        y = y.view(M, Bt, L, H, P)
        h_last = final.view(M, Bt, H, P, N)
    else:  # rank one: one chain over the mean state, keys and queries of all M modalities
        w = cp.weight
        lbar = math.log(w / M) + torch.logsumexp(la, dim=0)  # (Bt, L, H)
        logr = la - lbar + math.log(w)  # (M, Bt, L, H): log(w a_m / abar)
        keys = B.permute(1, 2, 0, 3, 4)  # (Bt, L, M, G, N)
        vals = (v / M).permute(1, 2, 0, 3, 4)  # (Bt, L, M, H, P)
        y, hbar = _chunked_chain(lbar, keys, vals, C.permute(1, 2, 0, 3, 4),
                                 logr.permute(1, 2, 0, 3), s0.mean(0), T)
        y = y.permute(2, 0, 1, 3, 4)  # (M, Bt, L, H, P)
        h_last = None
        if return_final_state:
            # h[L-1][m] = r_m abar Hbar[L-2] + own input, with abar Hbar[L-2] = Hbar[L-1] minus
            # the last step's inputs.
            kb = heads_of_groups(B[:, :, -1:], H)[:, :, 0]  # (M, Bt, H, N)
            last_in = v[:, :, -1, :, :, None] * kb[:, :, :, None, :]  # (M, Bt, H, P, N)
            moved = hbar - last_in.mean(0)
            h_last = torch.exp(logr[:, :, -1])[..., None, None] * moved + last_in
    own = heads_of_groups((B * C).sum(-1, keepdim=True), H)  # B[t] . C[t], (M, Bt, L, H, 1)
    y = y + own * v
    y = ssd_skip_and_gate(y, x, D, z).to(out_dtype)
    return (y, h_last) if return_final_state else y
