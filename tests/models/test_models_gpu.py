"""The registered models on a CUDA device: same outputs and gradients as on CPU, bf16 autocast,
streaming, attention paths, padding. Skipped where no CUDA device exists."""

from __future__ import annotations

import copy

import pytest
import torch

from coupled_mamba.models import create_model, list_models

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _set_scan_impl(model, impl):
    for module in model.modules():
        if hasattr(module, "scan_impl"):
            module.scan_impl = impl
    return model


@pytest.mark.parametrize("impl", ["torch", "auto"])
@pytest.mark.parametrize("name", list_models())
def test_cuda_matches_cpu(name, impl, make_config, make_inputs, make_mask):
    torch.manual_seed(0)
    cfg = make_config(dropout=0.0, coupling="learned") if name == "coupled_mamba" else \
        make_config(dropout=0.0)
    cpu = _set_scan_impl(create_model(name, cfg), "torch")
    gpu = _set_scan_impl(copy.deepcopy(cpu).cuda(), impl)
    xs = make_inputs(cfg, batch=4, length=40)
    masks = [make_mask([40, 33, 7, 1], length=40)] * 3
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)
    out = cpu(xs, mask=masks, present=present)
    out_g = gpu([x.cuda() for x in xs], mask=[m.cuda() for m in masks], present=present.cuda())
    torch.testing.assert_close(out_g.cpu(), out, atol=1e-4, rtol=1e-4)
    out.square().sum().backward()
    out_g.square().sum().backward()
    for (n, p), p_g in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        torch.testing.assert_close(p_g.grad.cpu(), p.grad, atol=1e-4, rtol=1e-3, msg=n)


@pytest.mark.parametrize("name", list_models())
def test_cuda_bf16_autocast_and_padding(name, make_config, make_inputs, make_mask):
    torch.manual_seed(0)
    cfg = make_config(dropout=0.0)
    model = create_model(name, cfg).cuda()
    xs = [x.cuda() for x in make_inputs(cfg, batch=4, length=64)]
    masks = [make_mask([64, 50, 9, 2], length=64).cuda()] * 3
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(xs, mask=masks)
    assert torch.isfinite(out).all()
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    poisoned = [torch.where(m[..., None], x, float("nan")) for x, m in zip(xs, masks, strict=True)]
    with torch.no_grad():
        assert torch.equal(model(poisoned, mask=masks), model(xs, mask=masks))


def test_cuda_streaming_equals_forward(make_config, make_inputs):
    torch.manual_seed(0)
    cfg = make_config(coupling=0.5)
    model = create_model("coupled_mamba", cfg).cuda().eval()
    xs = [x.cuda() for x in make_inputs(cfg, batch=2, length=16)]
    state = model.allocate_cache(2)
    with torch.no_grad():
        full = model.encode(xs)
        cache = model.encoder.allocate_cache(2)
        for t in range(16):
            pred = model.step([x[:, t] for x in xs], state)
            outs = model.encoder.step(model.project([x[:, t] for x in xs]), cache)
            for m in range(3):
                torch.testing.assert_close(outs[m], full[m][:, t], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(pred, model(xs), atol=1e-4, rtol=1e-4)


def test_cuda_sdpa_and_materialised_attention_agree(make_config, make_inputs, make_mask):
    torch.manual_seed(0)
    sdpa = create_model("cross_attention", make_config(dropout=0.0)).cuda().eval()
    explicit = create_model("cross_attention",
                            make_config(dropout=0.0, materialize_attention=True)).cuda().eval()
    explicit.load_state_dict(sdpa.state_dict())
    xs = [x.cuda() for x in make_inputs(sdpa.config, batch=4, length=48)]
    masks = [make_mask([48, 20, 5, 1], length=48).cuda()] * 3
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 0]], dtype=torch.bool).cuda()
    with torch.no_grad():
        a = sdpa(xs, mask=masks, present=present)
        b = explicit(xs, mask=masks, present=present)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
