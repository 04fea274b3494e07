"""Triton kernels of the coupled selective scan (docs/MATH.md, section 2): forward, backward.

    dt      = softplus(delta + delta_bias)          Abar = exp(dt A),   bbar = dt B u
    h[t][m] = Abar[t][m] * sum_k W[m, k] h[t-1][k] + bbar[t][m]
    y[t][m] = sum_n C[m, n, t] h[t][m, :, n] + D[m] u[m, t],   y *= silu(z)

Shapes: M modalities (MP = M padded to a power of two), Bt batch, D channels (BD per program),
N state size (NP padded), L length, CHUNK checkpoint interval, S sub-chunk length.

Two designs. The chunked kernels (_fwd_chunk_kernel, _bwd_chunk_kernel) serve
the couplings "none", "mean", "sum" with an associative scan over chunks of time. The sequential
kernels (_fwd_kernel, _bwd_kernel; described next) serve every coupling, a general W included.

Grid: (cdiv(D, BD), Bt). One program walks the whole sequence for one batch row and one block of
BD channels, all M modalities at once: the coupled state is one register tile (MP, BD, NP), so
the coupling sum over modalities never leaves the program. Abar and bbar are made on the fly from
u, delta, A, B; y, the D skip and the silu(z) gate are fused into the same pass.

Coupling kinds (KIND, a constexpr): 0 = "none" (W = I, nothing to do), 1 = rank one
(W = (w / M) 11^T: the coupled state is w times the mean state, one sum over the modality axis;
this is the single mean-state recurrence of docs/MATH.md section 2.1, computed in registers),
2 = a general (M, M) W (a small matrix product over the modality axis).

Backward (see docs/triton_kernel.md): the forward stores the state every CHUNK steps
(ckpt, (L / CHUNK, M, Bt, D, N)). The backward walks the chunks in reverse. For each chunk it
recomputes the state at every S-th step into a small per-program scratch (phase 1), then for each
sub-chunk, last first, recomputes its S states into registers (an unrolled loop; the states live
in a tuple) and steps backwards through them with the adjoint g = dL/dh[t] (phase 2):

    g[t]    = W^T (Abar[t+1] * g[t+1]) + C[t] dy'[t]          (dy' = dy * silu(z))
    dAbar   = g[t] * (W h[t-1]),   dbbar = g[t],   dC[t] = sum_d h[t] dy'[t]

Reductions across programs: dB and dC (summed over channels) use atomic adds when there is more
than one channel block, plain stores otherwise; dA, dD, d(delta_bias) and dW are written as
per-program partial sums that the launcher adds up with torch (deterministic, small).
"""

# One file per kernel variant; this module is their index, the one place the launchers import
# kernels from (``_triton_launch._kernels`` checks it was imported under the same
# TRITON_INTERPRET setting as triton itself).
from ._triton_chunk_kernels import _bwd_chunk_kernel, _fwd_chunk_kernel
from ._triton_par_kernels import _bwd_par_kernel, _fwd_par_kernel
from ._triton_seq_kernels import _bwd_kernel, _fwd_kernel

__all__ = ["_bwd_chunk_kernel", "_bwd_kernel", "_bwd_par_kernel", "_fwd_chunk_kernel",
           "_fwd_kernel", "_fwd_par_kernel"]
