"""minGRU's log-space parallel scan against its sequential step (including T = 784)."""

from __future__ import annotations

import pytest
import torch

from gatedrnn._engines._scan import linear_scan, log_scan, mingru_layer, mingru_step


def _sequential(log_a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_(t-1) + b_t, written out step by step in float64."""
    h = h0.double()
    out = []
    for t in range(log_a.shape[0]):
        h = torch.exp(log_a[t].double()) * h + b[t].double()
        out.append(h)
    return torch.stack(out)


@pytest.mark.parametrize("steps", [1, 7, 784])
def test_log_scan_matches_sequential_with_signs(steps: int) -> None:
    g = torch.Generator().manual_seed(steps)
    log_a = torch.nn.functional.logsigmoid(torch.randn(steps, 3, 5, generator=g, dtype=torch.float64) * 3)
    b = torch.randn(steps, 3, 5, generator=g, dtype=torch.float64)  # both signs
    h0 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    expected = _sequential(log_a, b, h0)
    got = log_scan(log_a, b, h0)
    torch.testing.assert_close(got, expected, atol=1e-11, rtol=1e-10)


def test_linear_scan_gradcheck() -> None:
    g = torch.Generator().manual_seed(0)
    log_a = torch.nn.functional.logsigmoid(torch.randn(6, 2, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    b = torch.randn(6, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(linear_scan, (log_a, b, h0))
    # second order: the adjoint scan's gradients, differentiated through the sequential recurrence
    assert torch.autograd.gradgradcheck(linear_scan, (log_a, b, h0))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("steps", [5, 784])
def test_mingru_scan_matches_streaming_step(steps: int, dtype: torch.dtype) -> None:
    """The training path (parallel scan) and the streaming path (one step at a time) agree."""
    g = torch.Generator().manual_seed(1)
    batch, inp, hid = 3, 4, 6
    x = torch.randn(steps, batch, inp, generator=g, dtype=dtype)
    w = torch.randn(2 * hid, inp, generator=g, dtype=dtype) * 0.7
    bias = torch.randn(2 * hid, generator=g, dtype=dtype)
    h0 = torch.randn(batch, hid, generator=g, dtype=dtype)
    gy = torch.randn(steps, batch, hid, generator=g, dtype=dtype)
    gh = torch.randn(batch, hid, generator=g, dtype=dtype)

    def grads(run):
        leaves = [t.clone().requires_grad_(True) for t in (x, h0, w, bias)]
        y, hn = run(*leaves)
        return (y, hn), torch.autograd.grad((y * gy).sum() + (hn * gh).sum(), leaves)

    def stream(x, h0, w, bias):
        h, ys = h0, []
        for t in range(x.shape[0]):
            h = mingru_step(x[t], h, w, bias)
            ys.append(h)
        return torch.stack(ys), h

    (y0, hn0), g0 = grads(stream)
    (y1, hn1), g1 = grads(lambda x, h0, w, bias: mingru_layer(x, h0, w, bias, None))
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(y1, y0, atol=tol, rtol=tol)
    torch.testing.assert_close(hn1, hn0, atol=tol, rtol=tol)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, atol=tol * 20, rtol=tol * 20)


def test_mingru_step_is_the_convention() -> None:
    """h_t = z*h_(t-1) + (1-z)*n with z = σ(W_z x + b_z), n = W_n x + b_n, by hand in float64."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, generator=g, dtype=torch.float64)
    h = torch.randn(2, 4, generator=g, dtype=torch.float64)
    w = torch.randn(8, 3, generator=g, dtype=torch.float64)
    b = torch.randn(8, generator=g, dtype=torch.float64)
    z = 1 / (1 + torch.exp(-(x @ w[:4].T + b[:4])))
    n = x @ w[4:].T + b[4:]
    torch.testing.assert_close(mingru_step(x, h, w, b), z * h + (1 - z) * n)


def test_scan_engine_equals_fused_engine_with_lengths() -> None:
    """The "scan" engine (log-space parallel scan) and the fused engine (compiled loop, hand-written
    backward) agree on outputs, h_n and every gradient, with lengths, T = 784; and the fused engine's
    no-grad path (the streaming step loop) gives the same outputs."""
    from gatedrnn import GRU

    torch.manual_seed(3)
    scan = GRU(4, 6, variant="mingru", engine="scan", dtype=torch.float64)
    fused = GRU(4, 6, variant="mingru", engine="fused", dtype=torch.float64)
    fused.load_state_dict(scan.state_dict())
    x = torch.randn(784, 3, 4, dtype=torch.float64)
    h0 = torch.randn(1, 3, 6, dtype=torch.float64)
    lengths = torch.tensor([784, 300, 1])
    gy = torch.randn(784, 3, 6, dtype=torch.float64)
    gh = torch.randn(1, 3, 6, dtype=torch.float64)
    results = []
    for layer in (scan, fused):
        xx, hh = x.clone().requires_grad_(True), h0.clone().requires_grad_(True)
        y, hn = layer(xx, hh, lengths=lengths)
        ((y * gy).sum() + (hn * gh).sum()).backward()
        assert layer.last_engine == layer.engine
        results.append([y.detach(), hn.detach(), xx.grad, hh.grad, *[p.grad for p in layer.parameters()]])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    with torch.no_grad():
        y_step, h_step = fused(x, h0, lengths=lengths)
    torch.testing.assert_close(y_step, results[0][0], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(h_step, results[0][1], atol=1e-10, rtol=1e-10)
    assert bool((y_step[300:, 1] == 0).all()) and bool((y_step[1:, 2] == 0).all())
    torch.testing.assert_close(h_step[0, 1], y_step[299, 1])


def test_scan_engine_refuses_other_variants() -> None:
    from gatedrnn import GRU

    with pytest.raises(RuntimeError, match="engine='scan' cannot run here: the parallel scan runs only minGRU"):
        GRU(3, 4, variant="mgu", engine="scan")(torch.randn(5, 2, 3))


@pytest.mark.parametrize("option", ["layer_norm", "zoneout", "zoneout-eval", "both"])
def test_scan_engine_runs_layer_norm_and_zoneout(option: str) -> None:
    """The scan with its options (the projection's layer norm; zoneout, which keeps minGRU linear)
    against the reference engine: outputs, h_n and every gradient, with lengths, same masks."""
    from gatedrnn import GRU

    kw = {
        "layer_norm": {"layer_norm": True},
        "zoneout": {"zoneout": 0.3},
        "zoneout-eval": {"zoneout": 0.3},
        "both": {"layer_norm": True, "zoneout": 0.3},
    }[option]
    ref = GRU(4, 6, variant="mingru", engine="reference", dtype=torch.float64, **kw)
    scan = GRU(4, 6, variant="mingru", engine="scan", dtype=torch.float64, **kw)
    with torch.no_grad():
        for p in ref.parameters():  # gains and shifts away from 1 and 0
            p.uniform_(-0.8, 0.8)
    scan.load_state_dict(ref.state_dict())
    x = torch.randn(40, 3, 4, dtype=torch.float64)
    h0 = torch.randn(1, 3, 6, dtype=torch.float64)
    lengths = torch.tensor([40, 17, 1])
    gy = torch.randn(40, 3, 6, dtype=torch.float64)
    results = []
    for layer in (ref, scan):
        layer.train(option != "zoneout-eval")
        xx, hh = x.clone().requires_grad_(True), h0.clone().requires_grad_(True)
        torch.manual_seed(9)
        y, hn = layer(xx, hh, lengths=lengths)
        ((y * gy).sum() + hn.sum()).backward()
        assert layer.last_engine == layer.engine
        results.append([y.detach(), hn.detach(), xx.grad, hh.grad, *[p.grad for p in layer.parameters()]])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_scan_engine_refuses_resets() -> None:
    from gatedrnn import GRU

    layer = GRU(3, 4, variant="mingru", engine="scan")
    with pytest.raises(RuntimeError, match="engine='scan' cannot run here: it does not run resets"):
        layer(torch.randn(5, 2, 3), resets=torch.zeros(5, 2, dtype=torch.bool))
