"""The coupled SSD op of Coupled Mamba-2 (docs/MATH.md, section 7) and the one place that picks
its implementation.

Shapes: M modalities, Bt batch, L length, H heads of P channels, G groups, N state size.

Implementations (both with the signature of :func:`coupled_ssd_ref`):

- "ref":     a loop over time, the executable spec (``_ssd_reference.py``).
- "chunked": chunked matrix products in plain PyTorch, any device, autograd
  (``_ssd_chunked.py``); a general (M, M) coupling takes the reference loop there.

"auto" is "chunked".
"""

from __future__ import annotations

from ._ssd_checks import check_ssd_inputs
from ._ssd_chunked import coupled_ssd_chunked
from ._ssd_reference import coupled_ssd_ref

SSD_IMPLS = ("auto", "ref", "chunked")


def coupled_ssd(x, dt, A, B, C, D=None, *, z=None, dt_bias=None, dt_softplus=True,
                coupling="mean", chunk_size=64, initial_state=None, return_final_state=False,
                impl: str = "auto"):
    """Coupled state-space dual of M Mamba-2 chains (docs/MATH.md, section 7).

    h[t][m] = exp(dt' A)[m] * sum_k W[m, k] h[t-1][k] + dt' x[t][m] (outer) B[t][m];
    y[t][m] = h[t][m] C[t][m] + D[m] x[t][m], gated by silu(z).

    Args:
        x: (M, Bt, L, H, P) inputs.
        dt: (M, Bt, L, H) raw step sizes, before bias and softplus.
        A: (M, H) real, negative: one decay rate per head.
        B, C: (M, Bt, L, G, N); head h uses group h // (H / G).
        D: (M, H) skip weight, or None.
        z: (M, Bt, L, H, P) gate, or None.
        dt_bias: (M, H) added to dt, or None.
        dt_softplus: apply softplus to dt (+ bias).
        coupling: "none" (W = I), "mean" (11^T / M, default), "sum" (11^T), a float alpha in
            [0, 1], or an (M, M) tensor (gradients flow to it).
        chunk_size: T, the block length of the chunked implementation (any L works).
        initial_state: (M, Bt, H, P, N) state before step 0, or None for zeros.
        return_final_state: also return the state after the last step.
        impl: "auto", "ref" or "chunked" (see the module docstring).

    Returns:
        y: (M, Bt, L, H, P) in x's dtype; with return_final_state also h[L-1] (M, Bt, H, P, N)
        in the compute dtype (float32 for half inputs).

    Raises:
        ValueError: a shape, device, dtype or option is wrong (the message names the argument).
    """
    check_ssd_inputs(x, dt, A, B, C, D, z, dt_bias, initial_state, chunk_size)
    if impl not in SSD_IMPLS:
        raise ValueError(f"impl: unknown implementation {impl!r}; expected one of {SSD_IMPLS}")
    fn = coupled_ssd_ref if impl == "ref" else coupled_ssd_chunked
    return fn(x, dt, A, B, C, D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
              coupling=coupling, chunk_size=chunk_size, initial_state=initial_state,
              return_final_state=return_final_state)
