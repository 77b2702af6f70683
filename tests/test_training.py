"""geofm.train_step and the optimizer/compile helpers that the training tasks share."""

import pytest
import torch

import geofm
from geofm import training
from geofm.errors import ConfigError
from geofm.models import create_model


def test_train_step_is_the_manual_adamw_step():
    """One step == forward with the same masks, loss on masked tokens, backward, fused AdamW with decay groups."""
    torch.manual_seed(0)
    a = create_model("prithvi_tiny")
    b = create_model("prithvi_tiny")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 6, 3, 64, 64)
    step = geofm.train_step(a, lr=1e-3, weight_decay=0.1, compile=False)
    assert step.optimizer.defaults["fused"] is True
    opt = torch.optim.AdamW(training.decay_groups(b, 0.1), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    for i in range(2):
        torch.manual_seed(10 + i)
        loss_a = step(x)
        torch.manual_seed(10 + i)
        loss_b, _, _ = b(x)
        loss_b.backward()
        opt.step()
        opt.zero_grad()
        torch.testing.assert_close(loss_a, loss_b.detach(), rtol=1e-5, atol=1e-6)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        if name.endswith("attn.qkv.bias"):  # the key bias has a zero gradient: Adam scales its rounding noise to lr
            d = pa.shape[0] // 3
            pa, pb = torch.cat([pa[:d], pa[2 * d:]]), torch.cat([pb[:d], pb[2 * d:]])
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.equal(a.encoder.cls_token, create_model("prithvi_tiny").encoder.cls_token)


def test_decay_groups_exclude_biases_norms_and_tokens():
    model = create_model("prithvi_tiny")
    decay, no_decay = training.decay_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 and "token" not in names[id(p)] for p in decay["params"])
    assert {"encoder.cls_token", "decoder.mask_token", "encoder.norm.weight", "encoder.blocks.0.attn.qkv.bias"} <= \
        {names[id(p)] for p in no_decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_bf16_step_learns_and_bad_precision_fails():
    torch.manual_seed(0)
    model = create_model("prithvi_tiny")
    x = torch.randn(2, 6, 3, 64, 64)
    step = geofm.train_step(model, precision="bf16-mixed", lr=3e-3, compile=False)
    torch.manual_seed(1)
    first = step(x)
    for _ in range(8):
        torch.manual_seed(1)  # same masks: the loss on them must fall
        last = step(x)
    assert first.dtype == torch.float32 and last < 0.9 * first
    with pytest.raises(ConfigError, match="precision must be one of"):
        geofm.train_step(model, precision="16")


def test_compile_resolution_and_eager_fallback(monkeypatch):
    assert training.resolve_compile(False, "cpu") is False
    assert training.resolve_compile(True, "cpu") is True
    with pytest.raises(ConfigError, match="compile"):
        training.resolve_compile("yes", "cpu")
    monkeypatch.setattr(training, "can_compile", lambda device: "no C++ compiler on PATH")
    assert training.resolve_compile("auto", "cpu") is False

    calls = []

    def fn(v):
        calls.append(v)
        return v + 1

    wrapped = training.CompiledOrEager(fn)

    def broken(*args, **kwargs):
        raise torch._inductor.exc.InductorError(RuntimeError("C++ compile error"), "stack")

    wrapped.compiled = broken
    assert wrapped(1) == 2 and wrapped.failed and calls == [1]
    def bad_input(v):
        raise ValueError(f"bad input {v}")

    with pytest.raises(ValueError, match="bad input"):  # errors of the function itself are not swallowed
        training.CompiledOrEager(bad_input)(1)
    # an error of the model that dynamo wraps in its own type: the eager rerun raises the model's
    # error, and compilation is not given up for it
    model_error = training.CompiledOrEager(bad_input)

    def wrapped_by_dynamo(v):
        raise torch._dynamo.exc.TorchRuntimeError(f"Dynamo failed to run FX node: bad input {v}")

    model_error.compiled = wrapped_by_dynamo
    with pytest.raises(ValueError, match="bad input 2"):
        model_error(2)
    assert not model_error.failed


def test_clip_gradients_by_norm_and_value():
    w = torch.nn.Parameter(torch.zeros(4))
    opt = training.adamw([w], lr=0.1)
    w.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    training.clip_gradients(opt, 1.0)
    torch.testing.assert_close(w.grad, torch.tensor([0.6, 0.8, 0.0, 0.0]), rtol=1e-5, atol=1e-6)
    w.grad = torch.tensor([3.0, -4.0, 0.5, 0.0])
    training.clip_gradients(opt, 1.0, "value")
    torch.testing.assert_close(w.grad, torch.tensor([1.0, -1.0, 0.5, 0.0]))
