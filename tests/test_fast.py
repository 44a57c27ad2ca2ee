"""The CPU fast path's building blocks, each against the exact module it replaces.

Proves that the packed oneDNN layers (weights stored once in the matrix units' layout) compute
what ``nn.Linear`` / ``nn.Conv2d`` / open_clip's transformer block compute, within bf16 rounding,
including the fused activations (QuickGELU as scaled swish, LeakyReLU) and the differentiable path
the explanation heat map uses; that e4e's subsampling shortcut is upstream's ``MaxPool2d(1, s)``;
that the side-by-side model workers limit only their own threads and give the sequential answers;
and that releasing a memory-mapped checkpoint's pages frees memory without changing a value, and
never touches ordinary memory. Full-size agreement is the benchmark's job (no timings here).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from ganorigin import accel
from ganorigin.accel.memory import release_file_pages, releasing_pages
from ganorigin.accel.packed import (ExactLinear, Int8Conv2d, Int8Linear, Int8UnfoldedConv2d, PackedConv2d,
                                    PackedLinear, PackedResidualBlock, TwoPartInt8Linear, quantize_weight)
from ganorigin.hub.checkpoints import load_tensors
from ganorigin.models.encoder import Subsample

from cpu_kernels import BF16_RUNS, INT8_SATURATES, UNSATURATED_BITS, needs_bf16

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
BF16 = torch.bfloat16


def _bf16_reference(x, weight, bias):
    """F.linear on bf16-rounded operands, accumulated in fp32: what the packed layer should give."""
    return F.linear(x.to(BF16).float(), weight.to(BF16).float(), bias.to(BF16).float())


@needs_bf16
@needs_onednn
@pytest.mark.parametrize("activation", ["none", "swish"])
def test_packed_linear_matches_linear(activation):
    torch.manual_seed(0)
    weight, bias, x = torch.randn(96, 64) / 8, torch.randn(96), torch.randn(2, 5, 64)
    layer = PackedLinear(weight, bias, BF16, activation)
    with torch.inference_mode():
        y = layer(x)
    expected = _bf16_reference(x, weight, bias)
    expected = F.silu(expected) if activation == "swish" else expected
    assert y.dtype == BF16 and y.shape == (2, 5, 96)
    torch.testing.assert_close(y.float(), expected, rtol=2e-2, atol=2e-2)
    assert not torch.allclose(y.float(), F.linear(x, weight), atol=1e-3)  # the bias and activation were applied


@needs_bf16
@needs_onednn
def test_packed_linear_is_differentiable_for_explanations():
    torch.manual_seed(0)
    weight, bias = torch.randn(32, 16), torch.randn(32)
    layer = PackedLinear(weight, bias, BF16, "swish")
    x = torch.randn(3, 16, requires_grad=True)
    (grad,) = torch.autograd.grad(layer(x).float().sum(), x)
    x_ref = x.detach().to(BF16).float().requires_grad_(True)
    (expected,) = torch.autograd.grad(F.silu(_bf16_reference(x_ref, weight, bias)).sum(), x_ref)
    torch.testing.assert_close(grad, expected, rtol=3e-2, atol=3e-2)


@needs_bf16
@needs_onednn
@pytest.mark.parametrize("stride, activation", [(1, "none"), (2, "leaky_relu")])
def test_packed_conv_matches_conv(stride, activation):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 3, stride=stride, padding=1)
    x = torch.randn(1, 16, 20, 20).to(memory_format=torch.channels_last)
    scalars = [0.2] if activation == "leaky_relu" else []
    packed = PackedConv2d(conv, BF16, activation, scalars)
    with torch.inference_mode():
        y = packed(x).float()
        expected = F.conv2d(x.to(BF16).float(), conv.weight.to(BF16).float(), conv.bias.to(BF16).float(), stride, 1)
    if activation == "leaky_relu":
        expected = F.leaky_relu(expected, 0.2)
    assert y.shape == expected.shape == (1, 24, 20 // stride, 20 // stride)
    torch.testing.assert_close(y, expected, rtol=2e-2, atol=2e-2)


@needs_bf16
@needs_onednn
def test_packed_block_matches_open_clip_block():
    """Fused QuickGELU (swish of 1.702x with 1/1.702 folded into c_proj), bf16 attention and the
    fp32 residual stream give open_clip's block output within bf16 rounding."""
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock

    torch.manual_seed(0)
    block = ResidualAttentionBlock(64, 4, act_layer=QuickGELU).eval()
    x = torch.randn(2, 17, 64)
    with torch.inference_mode():
        expected = block(x)
        packed = PackedResidualBlock(block, "bf16")
        y = packed(x)
    assert PackedResidualBlock.supports(block)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, expected, rtol=0, atol=0.05)
    assert (y - expected).abs().mean() < 0.01
    assert not PackedResidualBlock.supports(ResidualAttentionBlock(64, 4))  # nn.GELU: left alone


@needs_onednn
@pytest.mark.parametrize("precision", [pytest.param("bf16", marks=needs_bf16), "int8"])
def test_a_class_token_only_block_computes_the_class_token_as_the_whole_block(precision):
    """The last block computes the class token alone: in bf16 the same as the whole block's first
    token; in int8 closer to exact than the whole block, since that token's MLP runs exact."""
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock

    torch.manual_seed(0)
    block = ResidualAttentionBlock(64, 4, act_layer=QuickGELU, batch_first=True).eval()
    x = torch.randn(2, 17, 64)
    attention = accel.attention_paths(precision)[-1]  # the most exact: this test is about the MLP
    one = PackedResidualBlock(block, precision, class_token_only=True, attention=attention)
    with torch.inference_mode():
        whole, first = PackedResidualBlock(block, precision, attention=attention)(x), one(x)
        exact = block(x)[:, :1]
    assert first.shape == (2, 1, 64)
    if precision == "int8":  # that one token's MLP runs exact, on the original layers
        assert one.fc[0] is block.mlp.c_fc and one.proj is block.mlp.c_proj
        assert (first - exact).abs().max() < (whole[:, :1] - exact).abs().max()
    else:
        torch.testing.assert_close(first, whole[:, :1], rtol=0, atol=1e-5)
    torch.testing.assert_close(first, exact, rtol=0, atol=0.05)


@needs_bf16
@needs_onednn
def test_only_a_tower_pooled_by_its_class_token_gets_a_class_token_only_last_block():
    """CLIP's embedding reads the class token alone, so its last packed block computes that token
    alone and the detector's output does not change; a tower pooled by averaging keeps every token."""
    from ganorigin.accel.convert import reads_class_token_only
    from ganorigin.models import UFDDetector
    from ganorigin.testing import TINY_VISION

    torch.manual_seed(0)
    detector = UFDDetector(TINY_VISION).eval()
    fast = accel.fast_detector(detector, torch.device("cpu"), "bf16")
    blocks = fast.module.visual.transformer.resblocks
    assert [b.class_token_only for b in blocks] == [False] * (len(blocks) - 1) + [True]
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), detector(x), rtol=0, atol=0.05)
    detector.visual.pool_type = "avg"
    assert not reads_class_token_only(detector.visual)
    averaged = accel.fast_detector(detector, torch.device("cpu"), "bf16")
    assert not any(b.class_token_only for b in averaged.module.visual.transformer.resblocks)
    with torch.inference_mode():
        torch.testing.assert_close(averaged(x), detector(x), rtol=0, atol=0.05)


def test_subsample_is_upstreams_1x1_max_pool():
    x = torch.randn(2, 8, 9, 10)
    for stride in (1, 2):
        torch.testing.assert_close(Subsample(stride)(x), nn.MaxPool2d(1, stride)(x), rtol=0, atol=0)


def _rss_file_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssFile:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page release is Linux only")
def test_release_file_pages_frees_memory_and_keeps_values(tmp_path):
    torch.manual_seed(0)
    original = torch.randn(64, 1024, 1024)  # 256 MiB
    save_file({"visual.w": original}, str(tmp_path / "big.safetensors"))
    mapped = load_tensors(tmp_path / "big.safetensors", prefix="visual.")["visual.w"]
    assert torch.equal(mapped, original)  # reads every page: now resident
    before = _rss_file_bytes()
    release_file_pages([mapped])
    assert before - _rss_file_bytes() > 128 * 2**20
    assert torch.equal(mapped, original)  # re-read from the file on access, unchanged

    ordinary = original.clone()  # anonymous memory: must be left alone, never zeroed
    release_file_pages([ordinary])
    assert torch.equal(ordinary, original)


@needs_bf16
@needs_onednn
def test_packed_encoder_codes_do_not_depend_on_the_batch():
    """The pipeline feeds the packed e4e whole batches on CPU because each image's codes are
    bitwise the same alone or among others; this is that property, on the real prepare path."""
    from ganorigin.models.encoder import E4EEncoder
    from ganorigin.testing import TINY_E4E

    torch.manual_seed(0)
    encoder = accel.fast_encoder(E4EEncoder(TINY_E4E), torch.device("cpu"), "bf16")
    x = torch.rand(5, 3, 256, 256) * 2 - 1
    with torch.inference_mode():
        alone = torch.cat([encoder(x[i : i + 1]) for i in range(5)])
        together = encoder(x)
        in_pairs = torch.cat([encoder(x[i : i + 2]) for i in range(0, 5, 2)])
    assert any(isinstance(m, PackedConv2d) for m in encoder.modules())
    assert torch.equal(together, alone) and torch.equal(in_pairs, alone)


def test_model_workers_limit_only_their_own_threads():
    before = torch.get_num_threads()
    for threads, each in ((4, 2), (2, 1)):
        workers = accel.ModelWorkers(threads)
        assert [workers.submit(model, torch.get_num_threads).result() for model in ("detector", "encoder")] == [each, each]
    assert torch.get_num_threads() == before  # the caller and the process-wide setting are untouched
    fresh = []
    thread = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert fresh == [before]


def test_a_model_on_either_lane_runs_on_the_first_worker_free():
    """Community Forensics waits for whichever of CLIP's and e4e's workers finishes first; each
    lane's own models keep their order."""
    from ganorigin.accel.workers import EITHER

    workers = accel.ModelWorkers(2, {"detector": "detector", "encoder": "encoder", "commfor": EITHER})
    for slow in ("detector", "encoder"):
        release = threading.Event()
        held = workers.submit(slow, release.wait)
        fast = "encoder" if slow == "detector" else "detector"
        quick = workers.submit(fast, lambda: threading.current_thread().name)
        either = workers.submit("commfor", lambda: threading.current_thread().name)
        assert either.result(timeout=30) == quick.result(timeout=30) == f"ganorigin-{fast}"
        assert not held.done()
        release.set()
        assert held.result(timeout=30) is True
    order = []
    done = [workers.submit("detector", lambda i=i: order.append(i)) for i in range(5)]
    [future.result(timeout=30) for future in done]
    assert order == list(range(5))


def test_on_a_gpu_one_worker_runs_every_model_in_order_and_the_caller_is_free():
    """One thread makes every CUDA call (a CUDA graph being recorded must see no other), in the order submitted,
    while the caller's thread does the CPU's share of the analysis."""
    workers = accel.ModelWorkers.for_device(torch.device("cuda"))  # threads only: no GPU needed to build them
    release, order = threading.Event(), []
    held = workers.submit("detector", release.wait)
    done = [workers.submit(model, lambda model=model: order.append((model, threading.current_thread().name)))
            for model in ("encoder", "commfor", "styles", "detector")]
    assert not held.done() and order == []  # queued behind the first, and the caller was not held up
    release.set()
    [future.result(timeout=30) for future in done]
    assert order == [(model, "ganorigin-gpu") for model in ("encoder", "commfor", "styles", "detector")]
    assert len(workers._queue.threads) == 1


def test_a_model_runs_hooks_when_one_of_its_modules_or_a_global_hook_has_one():
    """A CUDA graph's replay would skip hooks, so a model with any runs as usual (the probe reads features so)."""
    from torch import nn

    from ganorigin.accel.graphs import cuda_graphs_for, runs_hooks

    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU()))
    assert not runs_hooks(model)
    for register in (model[1][0].register_forward_hook, model[0].register_forward_pre_hook,
                     nn.modules.module.register_module_forward_hook,
                     nn.modules.module.register_module_forward_pre_hook):
        handle = register(lambda *args: None)
        assert runs_hooks(model)
        handle.remove()
        assert not runs_hooks(model)
    assert cuda_graphs_for(model, torch.device("cpu")) is None  # graphs are CUDA's only
    assert accel.Accelerated(model, "bf16", graphs_on=torch.device("cpu")).graphs is None


def test_model_workers_threads_end_when_the_workers_are_collected():
    import gc

    before = set(threading.enumerate())
    workers = accel.ModelWorkers(2)
    assert workers.submit("commfor", lambda: 1).result(timeout=30) == 1
    threads = [t for t in threading.enumerate() if t.name.startswith("ganorigin-") and t not in before]
    assert len(threads) == 2
    del workers
    gc.collect()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)


@pytest.mark.parametrize("precision", ["fp32", "int8", pytest.param("bf16", marks=needs_bf16)])
def test_e4e_in_parts_gives_the_codes_of_one_forward_bitwise(precision):
    """The pipeline computes e4e's last feature maps on the encoder's worker and hands their style groups to
    whichever worker is free (``encode_in_parts``); the codes are one forward's, to the bit, at any batch."""
    from concurrent.futures import Future

    from ganorigin.factory import codes_from_parts, encode, encode_in_parts
    from ganorigin.models.encoder import E4EEncoder
    from ganorigin.testing import TINY_E4E

    torch.manual_seed(0)
    encoder = E4EEncoder(TINY_E4E)
    if precision != "fp32":
        encoder = accel.fast_encoder(encoder, torch.device("cpu"), precision)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)) for _ in range(3)]

    def now(fn):
        done = Future()
        done.set_result(fn())
        return done

    workers = accel.ModelWorkers(2)
    for batch in (1, 2):
        whole = encode(encoder, images, batch=batch)
        for submit in (now, lambda fn: workers.submit("styles", fn)):
            parts = encode_in_parts(encoder, images, submit, batch=batch)
            batches = -(-len(images) // batch)
            assert [len(futures) for _, futures in parts] == [1] * (batches - 1) + [3]  # the last one in parts
            assert np.array_equal(codes_from_parts(parts), whole)
    whole_only = nn.Sequential(nn.Flatten(), nn.LazyLinear(18 * 8))  # any encoder without e4e's parts runs whole
    whole_only(torch.zeros(1, 3, 256, 256))
    whole_only.requires_grad_(False)
    assert np.array_equal(codes_from_parts(encode_in_parts(whole_only, images, now, batch=2)),
                          encode(whole_only, images, batch=2))


def test_e4e_style_groups_go_to_the_worker_that_is_free():
    """While e4e's worker is still busy, the style groups it queued run on the other worker (CLIP's, once
    done) instead of waiting: the largest group first."""
    from ganorigin.factory import codes_from_parts, encode, encode_in_parts
    from ganorigin.models.encoder import E4EEncoder
    from ganorigin.testing import TINY_E4E

    torch.manual_seed(0)
    encoder = E4EEncoder(TINY_E4E)
    images = [Image.new("RGB", (64, 64), (120, 80, 40))]
    workers = accel.ModelWorkers(2)
    ran, queued = [], []

    def submit(fn):
        queued.append(workers.submit("styles", lambda: ran.append((threading.current_thread().name, fn.args[-1]))
                                     or fn()))
        return queued[-1]

    submitted, release = threading.Event(), threading.Event()

    def encode_then_stay_busy():
        parts = encode_in_parts(encoder, images, submit)
        submitted.set()
        release.wait(timeout=60)
        return parts

    held = workers.submit("encoder", encode_then_stay_busy)
    assert submitted.wait(timeout=60)
    [future.result(timeout=60) for future in queued]  # done while e4e's worker is still held
    assert not held.done()
    assert ran == [("ganorigin-detector", 2), ("ganorigin-detector", 1), ("ganorigin-detector", 0)]  # fine first
    release.set()
    one_forward = workers.submit("encoder", lambda: encode(encoder, images)).result(timeout=60)  # on as many threads
    assert np.array_equal(codes_from_parts(held.result(timeout=60)), one_forward)


def test_side_by_side_predictions_match_the_models_run_one_after_the_other(model, dev_sample):
    """``predict_batch`` (CLIP and e4e side by side on CPU fast paths) gives the answers the two
    models give when called one after the other: e4e's codes do not depend on its thread count,
    CLIP's P(fake) moves by at most 0.005 (its 4096-wide reduction splits differently on one core
    than on two)."""
    from ganorigin.images import load_image

    images = [load_image(p) for p in dev_sample[:4]]
    predictions = model.predict_batch(images, align=False)
    fake = model.fake_probabilities(images)
    gan = model.attributor.predict_proba(model.encode(images))
    np.testing.assert_allclose([p.probabilities for p in predictions], gan, rtol=0, atol=1e-6)
    np.testing.assert_allclose([p.fake_probability for p in predictions], fake, rtol=0, atol=0.005)


def test_releasing_pages_during_a_forward_changes_no_value(weights_dir):
    """The agreement probe's fp32 forwards give back each block's memory-mapped pages as they go
    (here after every block); the weights are re-read from the file, so the codes are unchanged."""
    from ganorigin.accel.convert import page_blocks
    from ganorigin.factory import load_encoder
    from ganorigin.testing import E4E_FILE

    encoder = load_encoder(weights_dir / E4E_FILE)  # memory-mapped
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.inference_mode():
        plain = encoder(x)
        with releasing_pages(page_blocks(encoder), every_bytes=1):
            released = [encoder(x), encoder(x)]
    assert all(torch.equal(codes, plain) for codes in released)


@needs_bf16
@needs_onednn
@pytest.mark.parametrize("kind", ["detector", "encoder"])
def test_acceleration_returns_a_new_module_and_leaves_the_model_as_built(kind):
    """Conversion is a transform: the model given keeps every module and value it was built with
    (no swapped blocks, no tags), and the new module computes the same within bf16."""
    from ganorigin.models import E4EEncoder, UFDDetector
    from ganorigin.testing import TINY_E4E, TINY_VISION

    torch.manual_seed(0)
    model = UFDDetector(TINY_VISION) if kind == "detector" else E4EEncoder(TINY_E4E)
    for module in model.modules():  # non-trivial BatchNorm statistics, so a wrong fold would show
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    kinds_before = [(name, type(m)) for name, m in model.named_modules()]
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    convert = accel.fast_detector if kind == "detector" else accel.fast_encoder
    fast_model = convert(model, torch.device("cpu"), "bf16")

    assert fast_model is not model and accel.precision_of(fast_model) == "bf16" and accel.precision_of(model) == "fp32"
    assert [(name, type(m)) for name, m in model.named_modules()] == kinds_before
    assert all(torch.equal(v, state_before[k]) for k, v in model.state_dict().items())
    packed = PackedResidualBlock if kind == "detector" else PackedConv2d
    assert any(isinstance(m, packed) for m in fast_model.modules())
    assert not any(isinstance(m, packed) for m in model.modules())
    x = torch.rand(2, 3, 224 if kind == "detector" else 256, 224 if kind == "detector" else 256) * 2 - 1
    with torch.inference_mode():
        reference, fast_out = model(x).float(), fast_model(x)
    scale = reference.abs().max()
    assert (fast_out - reference).abs().max() <= 0.05 * scale


def test_replace_modules_copies_only_the_path_to_a_replacement():
    root = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Linear(2, 2))
    new = accel.replace_modules(root, {"0.1": nn.Tanh()})
    assert isinstance(root[0][1], nn.ReLU) and isinstance(new[0][1], nn.Tanh)
    assert new is not root and new[0] is not root[0]  # the way to the replacement is copied
    assert new[1] is root[1] and new[0][0] is root[0][0]  # everything else is shared, not copied


@pytest.mark.parametrize("activation", ["none", "swish"])
def test_int8_linear_matches_linear_within_quantisation(activation):
    torch.manual_seed(0)
    weight, bias, x = torch.randn(96, 64) / 8, torch.randn(96) / 10, torch.randn(5, 7, 64)
    layer = Int8Linear(weight, bias, activation, UNSATURATED_BITS)
    with torch.inference_mode():
        got = layer(x)
    want = F.linear(x, weight, bias)
    want = F.silu(want) if activation == "swish" else want
    assert got.shape == want.shape and got.dtype == torch.float32
    error = (got - want).abs().max() / want.abs().max()
    assert 0 < error < 0.03  # int8 rounding: not exact, but close
    x.requires_grad_(True)  # the heat map's path: differentiable, on the dequantised weight
    layer(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_two_part_int8_linear_rounds_its_weights_far_more_finely_than_int8():
    """The weight's int8 part plus the int8 remainder: with activations that int8 represents
    exactly, what is left is the weights' rounding, which two parts make about 100x smaller."""
    torch.manual_seed(0)
    weight, bias = torch.randn(96, 64) / 8, torch.randn(96) / 10
    x = torch.randint(-127, 128, (5, 7, 64)).float() / 127  # each token's largest magnitude is 127/127
    x[..., 0] = 1.0
    want = F.linear(x, weight, bias)
    with torch.inference_mode():
        one = (Int8Linear(weight, bias, weight_bits=UNSATURATED_BITS)(x) - want).norm() / want.norm()
        two = (TwoPartInt8Linear(weight, bias, UNSATURATED_BITS)(x) - want).norm() / want.norm()
    assert 0 < two < one / 50


def test_two_part_int8_linear_quantises_each_token_on_its_own():
    """Per-token activation scales: a token's output does not depend on the other tokens (a token
    100x larger beside it changes nothing), and tokens of very different sizes keep their precision."""
    torch.manual_seed(0)
    weight, bias = torch.randn(48, 32) / 6, torch.randn(48) / 10
    layer = TwoPartInt8Linear(weight, bias)
    x = torch.randn(4, 32)
    with torch.inference_mode():
        alone = layer(x[:1])
        beside_a_giant = layer(torch.cat([x[:1], 100 * x[1:]]))[:1]
        per_tensor = Int8Linear(weight, bias)(torch.cat([x[:1], 100 * x[1:]]))[:1]  # one scale for all
    want = F.linear(x[:1], weight, bias)
    # the same integers; only the kernel's order of applying the scales may differ
    torch.testing.assert_close(beside_a_giant, alone, rtol=1e-5, atol=1e-6)
    assert float((alone - want).norm() / want.norm()) < 0.01
    assert float((per_tensor - want).norm() / want.norm()) > 0.1
    x.requires_grad_(True)  # the heat map's path: on the two parts' sum
    out = layer(x)
    out.sum().backward()
    assert float((out - F.linear(x, weight, bias)).detach().abs().max()) < 1e-3 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("isa, paths", [pytest.param("amx", {"bf16": (PackedLinear, PackedLinear)}, marks=needs_bf16),
                                        pytest.param("avx512_bf16", {"bf16": (PackedLinear, PackedLinear)},
                                                     marks=needs_bf16),
                                        ("avx512_vnni", {"two-part": (TwoPartInt8Linear, TwoPartInt8Linear),
                                                        "exact": (ExactLinear, ExactLinear)}),
                                        ("avx_vnni", {"two-part": (TwoPartInt8Linear, TwoPartInt8Linear),
                                                        "exact": (ExactLinear, ExactLinear)}),
                                        ("avx2", {"int8-qkv": (Int8Linear, ExactLinear),
                                                  "exact": (ExactLinear, ExactLinear)})])
def test_int8_attention_projections_run_in_the_cpus_ways_in_order(isa, paths, monkeypatch):
    """Native bf16 where the CPU has it (faster there than two int8 products), two-part int8 on VNNI, then
    exact; without VNNI (two int8 products cost more than one fp32 one there) q/k/v in plain int8 with the
    output projection exact first, then all exact. The MLP is int8 in every way."""
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock

    monkeypatch.setenv("GANORIGIN_CPU_ISA", isa)
    assert accel.attention_paths("int8") == tuple(paths)
    block = ResidualAttentionBlock(64, 4, act_layer=QuickGELU, batch_first=True).eval()
    x = torch.randn(2, 10, 64)
    for path, (qkv, out) in paths.items():
        packed = PackedResidualBlock(block, "int8", attention=path)
        assert (type(packed.qkv), type(packed.out)) == (qkv, out)
        assert type(packed.fc) is Int8Linear and type(packed.proj) is Int8Linear
        with torch.inference_mode():
            error = (packed(x) - block(x)).abs().max() / block(x).abs().max()
        # without VNNI, 8-bit weights can saturate the kernels' 16-bit pair sums (the probe judges each model)
        assert error < (0.1 if INT8_SATURATES else 0.03)
    assert type(PackedResidualBlock(block, "int8").qkv) is paths[next(iter(paths))][0]  # the first by default
    with pytest.raises(ValueError, match="attention path"):
        PackedResidualBlock(block, "int8", attention="fp16")


def test_a_refused_way_of_attention_falls_back_to_the_next_within_the_precision(weights_dir, monkeypatch, tmp_path):
    """On AVX2, int8 with q/k/v in int8 made to disagree: the detector stays int8 with exact attention
    (not fp32), each verdict cached, and a second start runs no probe."""
    from ganorigin.factory import detector_scores, load_detector
    from ganorigin.testing import CLIP_FILE, UFD_HEAD_FILE

    monkeypatch.setenv("GANORIGIN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GANORIGIN_CPU_ISA", "avx2")
    files = [weights_dir / CLIP_FILE, weights_dir / UFD_HEAD_FILE]
    model = load_detector(*files)
    ways = []

    def scores(module, images):  # the tiny CLIP's last block is packed (its first stays exact on AVX2)
        last = module.module.visual.transformer.resblocks[-1] if accel.precision_of(module) == "int8" else None
        ways.append(None if last is None else type(last.qkv).__name__)
        return detector_scores(module, images) + (0.5 if ways[-1] == "Int8Linear" else 0.0)

    fast = accel.accelerate(model, torch.device("cpu"), "int8", scores, kind="detector", weight_files=files)
    assert accel.precision_of(fast) == "int8" and ways == [None, "Int8Linear", "ExactLinear"]
    assert type(fast.module.visual.transformer.resblocks[-1].out) is ExactLinear
    checks = json.loads((tmp_path / "ganorigin" / "precision-checks.json").read_text())
    assert sorted(c["ok"] for c in checks.values()) == [False, True]
    again = accel.accelerate(model, torch.device("cpu"), "int8", lambda m, i: pytest.fail("the probe ran again"),
                             kind="detector", weight_files=files)
    assert type(again.module.visual.transformer.resblocks[-1].qkv) is ExactLinear


@pytest.mark.parametrize("isa, first", [pytest.param("avx512_bf16", "bf16", marks=needs_bf16),
                                        pytest.param("amx", "bf16", marks=needs_bf16), ("avx512_vnni", "exact"),
                                        ("avx2", "exact")])
def test_int8_clip_keeps_its_first_block_out_of_int8(isa, first, monkeypatch):
    """The first block sees the raw patch embeddings, where int8's ranges are widest: exact fp32, or
    bf16 where the CPU has native bf16; every later block has int8 MLPs, but the last, which computes
    the class token alone with its MLP exact."""
    from open_clip.transformer import ResidualAttentionBlock

    from ganorigin.models import UFDDetector
    from ganorigin.testing import TINY_VISION

    monkeypatch.setenv("GANORIGIN_CPU_ISA", isa)
    torch.manual_seed(0)
    detector = UFDDetector(dataclasses.replace(TINY_VISION, layers=3)).eval()  # first, middle, last
    fast = accel.fast_detector(detector, torch.device("cpu"), "int8")
    blocks = fast.module.visual.transformer.resblocks
    assert len(blocks) == 3
    if first == "exact":
        assert type(blocks[0]) is ResidualAttentionBlock and blocks[0] is detector.visual.transformer.resblocks[0]
    else:
        assert type(blocks[0]) is PackedResidualBlock and type(blocks[0].fc) is PackedLinear
    assert all(type(block.fc) is Int8Linear for block in blocks[1:-1])
    assert blocks[-1].class_token_only and blocks[-1].proj is detector.visual.transformer.resblocks[-1].mlp.c_proj
    x = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.inference_mode():
        want, got = detector(x), fast(x)
    assert float((got - want).abs().max()) <= 0.05 * float(want.abs().max())


@pytest.mark.parametrize("isa, expected", [pytest.param("amx", "bf16", marks=needs_bf16),
                                           pytest.param("avx512_bf16", "bf16", marks=needs_bf16), ("avx512_vnni", "int8"),
                                           ("avx_vnni", "int8"), ("avx2", "int8"), ("none", "fp32")])
def test_auto_precision_follows_the_cpu_class(isa, expected, monkeypatch):
    monkeypatch.delenv("GANORIGIN_PRECISION", raising=False)
    monkeypatch.setenv("GANORIGIN_CPU_ISA", isa)
    assert accel.precision.cpu_class() == isa
    assert accel.resolve_precision("auto", torch.device("cpu")) == expected


def test_bf16_is_used_only_where_this_cpus_onednn_runs_it(monkeypatch):
    """A bf16 class named by GANORIGIN_CPU_ISA on a CPU without oneDNN's bf16 (AVX2-only, e.g. AMD Zen 3) gets no
    bf16 parts and no bf16 candidate, and forcing bf16 there is refused with the reason: the kernels would fail."""
    monkeypatch.delenv("GANORIGIN_PRECISION", raising=False)
    monkeypatch.setenv("GANORIGIN_CPU_ISA", "avx512_bf16")
    cpu = torch.device("cpu")
    assert accel.cpu_has_bf16_matrix_units() == BF16_RUNS
    assert ("bf16" in accel.candidate_precisions("auto", cpu, "detector")) == BF16_RUNS
    assert accel.attention_paths("int8") == (("bf16",) if BF16_RUNS else ("two-part", "exact"))
    if not BF16_RUNS:
        with pytest.raises(ValueError, match="Use 'auto', 'int8' or 'fp32'"):
            accel.resolve_precision("bf16", cpu)


def test_cpu_class_is_read_from_the_cpu_flags(monkeypatch):
    monkeypatch.delenv("GANORIGIN_CPU_ISA", raising=False)
    for flags, expected in (({"avx2", "avx512_vnni", "avx512_bf16", "amx_bf16"}, "amx"),
                            ({"avx2", "avx512_vnni", "avx512_bf16"}, "avx512_bf16"),  # AMD Zen 4
                            ({"avx2", "avx512_vnni"}, "avx512_vnni"), ({"avx2", "avx_vnni"}, "avx_vnni"),
                            ({"avx2"}, "avx2"), ({"asimd", "fp"}, "none")):  # an ARM CPU
        monkeypatch.setattr(accel.precision, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert accel.precision.cpu_class() == expected
    monkeypatch.setenv("GANORIGIN_CPU_ISA", "pentium")
    with pytest.raises(ValueError, match="GANORIGIN_CPU_ISA"):
        accel.precision.cpu_class()


def test_int8_path_quantises_clip_and_e4e_and_agrees(sources, dev_sample, monkeypatch, tmp_path):
    """The int8 path, checked by the probe, agrees with fp32. (The tiny CLIP has two blocks, the first kept
    out of int8 and the last computing the class token alone, its MLP exact; the int8 MLPs of the blocks
    between are tested on a three-block CLIP above.)"""
    from ganorigin import GANOrigin

    monkeypatch.setenv("GANORIGIN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GANORIGIN_EXACT_BORDERLINE", "0")  # the fast detector's own scores (the tiny model's are all borderline)
    exact = GANOrigin.from_pretrained(sources, device="cpu", precision="fp32", align=False)
    int8 = GANOrigin.from_pretrained(sources, device="cpu", precision="int8", align=False)
    assert accel.precision_of(int8.detector) == accel.precision_of(int8.encoder) == "int8" == int8.precision
    blocks = int8.detector.module.visual.transformer.resblocks
    assert isinstance(blocks[-1], PackedResidualBlock) and blocks[-1].class_token_only
    assert any(isinstance(m, Int8Conv2d) for m in int8.encoder.modules())
    a, b = exact.predict_batch(dev_sample[:4]), int8.predict_batch(dev_sample[:4])
    assert max(abs(p.fake_probability - q.fake_probability) for p, q in zip(a, b)) <= 0.01
    assert [p.attribution for p in a] == [q.attribution for q in b]
    assert np.abs(np.array([p.probabilities for p in a]) - [q.probabilities for q in b]).max() <= 0.01
    # int8 quantises each input over its own range, so an image's codes never depend on its batch-mates
    images = [Image.open(path).convert("RGB") for path in dev_sample[:3]]
    assert np.array_equal(int8.encode(images), np.concatenate([int8.encode([im]) for im in images]))


class _FirstValue(nn.Module):
    """A stand-in detector whose logit is its input's first value, plus ``shift`` (a fast path's error)."""

    def __init__(self, shift: float = 0.0):
        super().__init__()
        self.shift = nn.Parameter(torch.tensor(shift), requires_grad=False)

    def forward(self, x):
        return x.flatten(1)[:, 0] + self.shift


def test_borderline_images_are_scored_again_exactly_and_the_others_keep_the_fast_score():
    """Only the images whose *fast* P(fake) lies strictly inside (band, 1 - band) get the exact logit;
    the rest keep the fast one (with an error of 0.3 logit, as int8 CLIP's worst moves)."""
    exact, fast = _FirstValue(), _FirstValue(shift=0.3)
    model = accel.BorderlineExact(fast, exact, band=0.02)  # fast P in (0.02, 0.98): |fast logit| < 3.89
    logits = torch.tensor([-6.0, -4.3, -3.0, 0.0, 2.0, 3.5, 3.7, 6.0])
    x = logits[:, None, None, None].expand(-1, 3, 4, 4).contiguous()
    with torch.inference_mode():
        out = model(x)
    rescored = torch.tensor([False, False, True, True, True, True, False, False])  # fast -4.0 and 4.0 stay
    assert torch.equal(out[rescored], logits[rescored])
    assert torch.equal(out[~rescored], logits[~rescored] + 0.3)
    assert model.rescored == 4 and accel.precision_of(model) == "fp32"  # a stand-in fast model: not Accelerated
    with torch.inference_mode():
        model(x[:1])
    assert model.rescored == 4  # nothing borderline: the exact model is not run


def test_images_near_a_verdicts_edge_are_scored_again_exactly():
    """With ``edges`` (Community Forensics' threshold 0.5 and its band's edges 0.4 and 0.6) and no band, only
    the images whose fast P(fake) is within ``margin`` of an edge get the exact logit."""
    logit = lambda p: float(np.log(p / (1 - p)))  # noqa: E731
    exact, fast = _FirstValue(), _FirstValue(shift=0.02)
    model = accel.BorderlineExact(fast, exact, band=None, edges=(0.4, 0.5, 0.6), margin=0.01)
    logits = torch.tensor([logit(p) for p in (0.1, 0.394, 0.45, 0.5, 0.585, 0.7, 0.99)])
    x = logits[:, None, None, None].expand(-1, 3, 2, 2).contiguous()
    with torch.inference_mode():
        out = model(x)
    rescored = torch.tensor([False, True, False, True, False, False, False])  # fast 0.399, 0.505 (0.5899: 0.0101 off)
    assert torch.equal(out[rescored], logits[rescored]) and torch.equal(out[~rescored], logits[~rescored] + 0.02)
    assert model.rescored == 2


def test_a_borderline_rescore_stays_differentiable_for_the_heat_map():
    """The gradient heat map differentiates P(fake): through the exact model for a borderline image,
    through the fast one otherwise."""
    model = accel.BorderlineExact(_FirstValue(shift=0.3), _FirstValue(), band=0.02)
    x = torch.tensor([0.0, 8.0])[:, None, None, None].expand(-1, 3, 2, 2).contiguous().requires_grad_()
    model(x).sum().backward()
    expected = torch.zeros_like(x)
    expected[:, 0, 0, 0] = 1
    assert torch.equal(x.grad, expected)


def test_the_fast_detector_scores_borderline_images_as_fp32_does(sources, dev_sample, monkeypatch, tmp_path):
    """From the published-format weights, a fast detector wraps the exact one (by default, band 0.02): the
    dev images it scores as borderline get fp32's P(fake) exactly, the others its own; with
    ``GANORIGIN_EXACT_BORDERLINE=0`` it is not wrapped."""
    from ganorigin import GANOrigin
    from ganorigin.hub.registry import UFD_PREPROCESS
    from ganorigin.images import load_image

    monkeypatch.setenv("GANORIGIN_CACHE_DIR", str(tmp_path))
    images = [load_image(p) for p in dev_sample]
    exact = GANOrigin.from_pretrained(sources, device="cpu", precision="fp32", align=False)
    assert not isinstance(exact.detector, accel.BorderlineExact)  # exact already
    reference = exact.fake_probabilities(images)
    default = GANOrigin.from_pretrained(sources, device="cpu", precision="int8", align=False)
    assert isinstance(default.detector, accel.BorderlineExact) and default.detector.band == accel.convert.BORDERLINE
    monkeypatch.setenv("GANORIGIN_EXACT_BORDERLINE", "0.2")  # the tiny model scores 0.1-0.4: some in, some out
    fast = GANOrigin.from_pretrained(sources, device="cpu", precision="int8", align=False)
    assert isinstance(fast.detector, accel.BorderlineExact) and accel.precision_of(fast.detector) == "int8"
    with torch.inference_mode():
        alone = np.array([float(torch.sigmoid(fast.detector.fast(UFD_PREPROCESS(im)[None]))) for im in images])
    close = (alone > 0.2) & (alone < 0.8)
    assert close.any() and not close.all(), alone
    scores = fast.fake_probabilities(images)
    assert np.array_equal(scores[close], reference[close]) and fast.detector.rescored == close.sum()
    assert np.array_equal(scores[~close], alone[~close]) and not np.array_equal(scores, reference)
    monkeypatch.setenv("GANORIGIN_EXACT_BORDERLINE", "0")
    off = GANOrigin.from_pretrained(sources, device="cpu", precision="int8", align=False)
    assert isinstance(off.detector, accel.Accelerated)
    for bad in ("0.5", "-0.1", "half"):
        monkeypatch.setenv("GANORIGIN_EXACT_BORDERLINE", bad)
        with pytest.raises(ValueError, match="GANORIGIN_EXACT_BORDERLINE"):
            accel.borderline_band()


@pytest.mark.parametrize("encoder", [True, False])
@pytest.mark.parametrize("isa", ["avx2", "avx_vnni", "avx512_vnni", "avx512_bf16", "amx"])
def test_int8_weights_leave_a_bit_out_only_for_e4e_on_cpus_without_vnni(isa, encoder, monkeypatch):
    """Without VNNI the int8 kernels add pairs of uint8 x int8 products in 16 bits: 8-bit weights
    could saturate them (255 * 127 * 2 > 32767), 7-bit ones cannot (255 * 63 * 2 < 32767). e4e's
    convolutions saturated measurably there, so they take 7 bits; every other int8 layer takes 8."""
    from ganorigin.accel.packed import int8_weight_bits

    monkeypatch.setenv("GANORIGIN_CPU_ISA", isa)
    bits = 7 if encoder and isa == "avx2" else 8
    assert int8_weight_bits(encoder=encoder) == bits
    weight = torch.randn(16, 32)
    values = quantize_weight(weight, bits).int_repr()
    assert values.abs().max() == 2 ** (bits - 1) - 1  # each row's largest weight uses the whole range
    layer = Int8Linear(weight, None, weight_bits=bits)
    packed = layer.packed.to_dense().T
    assert torch.equal(packed, values)


@pytest.mark.parametrize("isa", ["avx2", "avx512_vnni"])
def test_int8_layers_take_the_weight_bits_of_their_model(isa, monkeypatch):
    """On every CPU class the transformers' int8 linears use 8-bit weights; e4e's use
    :func:`int8_weight_bits` for the encoder (7 bits without VNNI)."""
    from ganorigin.accel.convert import fast_encoder
    from ganorigin.models.encoder import E4EEncoder
    from ganorigin.testing import TINY_E4E
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock

    monkeypatch.setenv("GANORIGIN_CPU_ISA", isa)
    block = PackedResidualBlock(ResidualAttentionBlock(64, 4, act_layer=QuickGELU).eval(), "int8")
    for linear in (block.fc, block.proj):
        assert linear.packed.to_dense().abs().max() == 127
    encoder = fast_encoder(E4EEncoder(TINY_E4E).eval(), torch.device("cpu"), "int8")
    convs = [m for m in encoder.modules() if isinstance(m, Int8Conv2d)]
    assert convs and {int(m.packed.to_dense().abs().max()) for m in convs} == {63 if isa == "avx2" else 127}


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shift", [0.0, 3.0])
def test_int8_conv_matches_conv_on_inputs_that_are_not_centred(stride, shift):
    """After a ReLU-like activation a conv's input is mostly positive, its output is not: the int8
    conv must not clip the output to the input's range (torch's ``conv2d_dynamic`` does)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 3, stride, 1).eval()
    x = F.leaky_relu(torch.randn(2, 16, 12, 12)) + shift
    with torch.inference_mode():
        got, want = Int8Conv2d(conv, UNSATURATED_BITS)(x), conv(x)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert want.min() < 0 < want.max()  # outputs of both signs, whatever the input's
    error = float((got - want).norm() / want.norm())
    assert 0 < error < 0.03


@pytest.mark.parametrize("size, stride", [(8, 2), (2, 2), (5, 1)])
def test_int8_conv_as_patches_computes_the_int8_conv(size, stride):
    """The same integers as :class:`Int8Conv2d` (the patches' range is the map's, widened to 0 by the
    padding, as the conv's input range), so the same answer up to the kernels' order of summing."""
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 24, 3, stride, 1).eval()
    x = F.leaky_relu(torch.randn(2, 32, size, size)) + 0.5
    with torch.inference_mode():
        got, int8, want = Int8UnfoldedConv2d(conv)(x), Int8Conv2d(conv)(x), conv(x)
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, int8, rtol=1e-4, atol=1e-5)
    assert 0 < float((got - want).norm() / want.norm()) < 0.03


@pytest.mark.parametrize("isa", ["avx512_vnni", pytest.param("avx512_bf16", marks=needs_bf16),
                                 pytest.param("amx", marks=needs_bf16), "avx2"])
def test_int8_encoder_runs_each_convolution_in_the_cpus_fastest_way(isa, monkeypatch):
    """The style blocks' last convolutions (on maps of 8x8 and less) are bf16 with their LeakyReLU fused
    on AVX-512-BF16 without AMX (on AMX int8 measured faster at every size). The first ones of the blocks
    that read the same map are one int8 convolution as patches (their own are ``nn.Identity``). Every other convolution reading the last
    stage's width (on AVX2 the stage before's too) is int8 as patches through one int8 linear, and every
    narrower one an int8 convolution, except the squeeze-and-excitation gates' 1x1 convolutions (on 1x1
    maps): exact."""
    from ganorigin.accel.convert import STYLE_CONVS_IN_BF16, fast_encoder, style_groups
    from ganorigin.models.encoder import E4EEncoder, SEModule
    from ganorigin.testing import TINY_E4E

    monkeypatch.setenv("GANORIGIN_CPU_ISA", isa)
    original = E4EEncoder(TINY_E4E).eval()
    encoder = fast_encoder(original, torch.device("cpu"), "int8")
    styles = encoder.module.styles
    assert [tuple(g) for g in style_groups(original)] == [(0, 1, 2), (3, 4, 5, 6), tuple(range(7, 18))]
    assert [(type(m), m.linear.out_features) for m in styles.first] == [
        (Int8UnfoldedConv2d, n * TINY_E4E.channels[-1]) for n in (3, 4, 11)]
    for block in styles:
        assert type(block.convs[0]) is nn.Identity
        convs = [m for m in block.convs if not isinstance(m, (nn.LeakyReLU, nn.Identity))]
        small = min(STYLE_CONVS_IN_BF16, len(convs)) if isa == "avx512_bf16" else 0
        assert [type(m) for m in convs] == [Int8UnfoldedConv2d] * (len(convs) - small) + [PackedConv2d] * small
        assert all(getattr(m, "linear", m).activation == "leaky_relu" for m in convs)  # each LeakyReLU fused
        assert not any(isinstance(m, nn.LeakyReLU) for m in block.convs)
    assert all(m.linear.activation == "leaky_relu" for m in styles.first)
    body = {path: type(encoder.module.get_submodule(path)) for path, m in original.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and not path.startswith("styles.")}
    reads = {path: original.get_submodule(path).in_channels for path in body}
    wide = TINY_E4E.channels[-2 if isa == "avx2" else -1]
    assert {body[path] for path in body if reads[path] >= wide} == {Int8UnfoldedConv2d}
    assert {body[path] for path in body if reads[path] < wide} == {Int8Conv2d}
    gates = {id(conv) for m in encoder.modules() if isinstance(m, SEModule) for conv in (m.fc1, m.fc2)}
    exact = {id(m) for m in encoder.modules() if type(m) is nn.Conv2d}
    assert gates and exact == gates


@pytest.mark.parametrize("isa", ["avx512_vnni", "avx2"])
def test_style_blocks_that_share_a_first_convolution_give_the_styles_of_their_own_bitwise(isa, monkeypatch):
    """Each block of a group on its own first convolution (int8, as patches) and on its slice of the group's
    one give the same style, to the bit; and the group runs that one convolution once."""
    from ganorigin.accel.convert import fast_encoder, style_groups
    from ganorigin.accel.packed import int8_weight_bits
    from ganorigin.models.encoder import E4EEncoder
    from ganorigin.testing import TINY_E4E

    monkeypatch.setenv("GANORIGIN_CPU_ISA", isa)
    torch.manual_seed(0)
    original = E4EEncoder(TINY_E4E).eval()
    styles = fast_encoder(original, torch.device("cpu"), "int8").module.styles
    calls = []
    for first in styles.first:
        first.register_forward_hook(lambda module, args, out: calls.append(module))
    for indices, size in zip(style_groups(original), (16, 32, 64)):
        x = torch.randn(1, TINY_E4E.channels[-1], size, size).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            shared = styles.outputs(indices, x)
            own = [styles[i](Int8UnfoldedConv2d(original.styles[i].convs[0], int8_weight_bits(encoder=True),
                                                "leaky_relu", [original.styles[i].convs[1].negative_slope])(x))
                   for i in indices]
        assert len(shared) == len(indices) and all(torch.equal(a, b) for a, b in zip(shared, own))
    assert calls == list(styles.first)


@needs_bf16
@needs_onednn
def test_bf16_encoder_runs_the_style_blocks_in_int8_on_amx(monkeypatch):
    """In bf16 too, e4e's style blocks run as in int8, on Intel AMX every convolution as int8 patches (the
    blocks that read the same map sharing the first), faster than in bf16 and half the bytes; the other
    convolutions are packed bf16; each LeakyReLU fused; the codes stay near fp32's."""
    from ganorigin.accel.convert import SharedInputStyleBlocks, fast_encoder, style_groups
    from ganorigin.models.encoder import E4EEncoder
    from ganorigin.testing import TINY_E4E

    monkeypatch.setenv("GANORIGIN_CPU_ISA", "amx")
    torch.manual_seed(0)
    original = E4EEncoder(TINY_E4E).eval()
    encoder = fast_encoder(original, torch.device("cpu"), "bf16")
    styles = encoder.module.styles
    assert isinstance(styles, SharedInputStyleBlocks) and len(styles.first) == len(style_groups(original))
    assert all(type(m) is Int8UnfoldedConv2d and m.linear.activation == "leaky_relu" for m in styles.first)
    for block in styles:
        convs = [m for m in block.convs if not isinstance(m, nn.Identity)]
        assert convs and all(type(m) is Int8UnfoldedConv2d and m.linear.activation == "leaky_relu" for m in convs)
    body = [m for path, m in encoder.module.named_modules() if not path.startswith("styles")]
    assert any(type(m) is PackedConv2d for m in body) and not any(type(m) is Int8UnfoldedConv2d for m in body)
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.inference_mode():
        want, got = original(x), encoder(x)
    assert 0 < float((got - want).norm() / want.norm()) < 0.05


@pytest.mark.parametrize("isa", ["avx512_vnni", pytest.param("avx512_bf16", marks=needs_bf16), "avx2"])
def test_int8_encoder_codes_stay_close_to_fp32(isa, monkeypatch):
    from ganorigin.accel.convert import fast_encoder
    from ganorigin.models.encoder import E4EEncoder
    from ganorigin.testing import TINY_E4E

    monkeypatch.setenv("GANORIGIN_CPU_ISA", isa)
    torch.manual_seed(0)
    encoder = E4EEncoder(TINY_E4E).eval()
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    fast = fast_encoder(encoder, torch.device("cpu"), "int8")
    with torch.inference_mode():
        want, got = encoder(x), fast(x)
    assert any(isinstance(m, (Int8Conv2d, Int8UnfoldedConv2d)) for m in fast.modules())
    error = float((got - want).norm() / want.norm())
    assert 0 < error < 0.05


def test_the_cached_probe_verdict_is_per_cpu_class_and_onednn_isa(weights_dir, monkeypatch):
    """A verdict cached under one CPU class (or oneDNN limit) must not be reused under another: the
    int8 path uses 7-bit weights without VNNI, and oneDNN's kernels differ per instruction set."""
    from ganorigin.accel.probe import _check_key

    files = [weights_dir / "fc_weights.pth"]
    cpu = torch.device("cpu")
    keys = set()
    for isa in ("avx512_vnni", "avx2"):
        monkeypatch.setenv("GANORIGIN_CPU_ISA", isa)
        for onednn in ("", "AVX2"):
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn)
            keys.add(_check_key("detector", files, cpu, "int8"))
    assert len(keys) == 4
    assert _check_key("detector", files, cpu, "int8") == _check_key("detector", files, cpu, "int8")


@pytest.mark.parametrize("isa, vits, encoder", [pytest.param("amx", ("bf16", "int8"), ("bf16", "int8"), marks=needs_bf16),
                                               pytest.param("avx512_bf16", ("int8", "bf16"), ("int8", "bf16"),
                                                            marks=needs_bf16),
                                               ("avx512_vnni", ("int8",), ("int8",)), ("avx_vnni", ("int8",), ("int8",)),
                                               ("avx2", ("int8",), ("int8",)), ("none", (), ())])
def test_auto_tries_per_model_the_paths_measured_fastest_for_the_cpu_class(isa, vits, encoder, monkeypatch):
    monkeypatch.delenv("GANORIGIN_PRECISION", raising=False)
    monkeypatch.setenv("GANORIGIN_CPU_ISA", isa)
    cpu = torch.device("cpu")
    assert accel.candidate_precisions("auto", cpu, "detector") == vits
    assert accel.candidate_precisions(None, cpu, "commfor") == vits
    assert accel.candidate_precisions("auto", cpu, "encoder") == encoder
    if BF16_RUNS:
        assert accel.candidate_precisions("bf16", cpu, "encoder") == ("bf16",)  # forced: that one only
    else:
        with pytest.raises(ValueError, match="needs a CPU whose oneDNN runs bf16"):
            accel.candidate_precisions("bf16", cpu, "encoder")
    assert accel.candidate_precisions("fp32", cpu, "detector") == ("fp32",)


@needs_bf16
def test_the_detectors_probe_compares_logits_so_a_saturated_probability_hides_no_move(weights_dir, monkeypatch,
                                                                                      tmp_path):
    """With a head that puts every image at P(fake) 0 to float precision, int8 moves the probe image's P by
    nothing a bound could see, but its logit visibly: the detector's probe compares logits, so a bound
    int8 cannot meet refuses it."""
    import hashlib
    import shutil

    from ganorigin import WeightSources
    from ganorigin.accel.probe import probe_images
    from ganorigin.factory import create_detector, detector_logits, detector_scores, load_detector
    from ganorigin.testing import CLIP_FILE, UFD_HEAD_FILE

    folder = shutil.copytree(weights_dir, tmp_path / "weights")
    head = torch.load(folder / UFD_HEAD_FILE, map_location="cpu", weights_only=True)
    torch.save({"weight": head["weight"], "bias": torch.full_like(head["bias"], -60.0)}, folder / UFD_HEAD_FILE)
    model = load_detector(folder / CLIP_FILE, folder / UFD_HEAD_FILE)
    int8 = accel.fast_detector(model, torch.device("cpu"), "int8")
    assert np.abs(detector_scores(int8, probe_images()) - detector_scores(model, probe_images())).max() < 1e-20
    assert np.abs(detector_logits(int8, probe_images()) - detector_logits(model, probe_images())).max() > 1e-5

    monkeypatch.setenv("GANORIGIN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(accel.probe, "NOISE_MARGIN", 1e6)  # noise over about 1e-6 refused
    sources = WeightSources(weights_dir=str(folder), local_files_only=True,
                            ufd_head_sha256=hashlib.sha256((folder / UFD_HEAD_FILE).read_bytes()).hexdigest())
    assert accel.precision_of(create_detector(sources=sources, pretrained=True, device="cpu", precision="int8")) == "fp32"


def _worst_kept_move(band, move):
    """The most a logit moved by ``move`` takes a P(fake) the fast detector keeps (at most ``band``, at least
    ``1 - band``; every one with the band off) from where it was."""
    p = np.linspace(1e-6, 1 - 1e-6, 200001)
    kept = p[(p <= band) | (p >= 1 - band)] if band > 0 else p
    logit = np.log(kept / (1 - kept))
    return max(np.abs(1 / (1 + np.exp(-(logit + s * move))) - kept).max() for s in (-1, 1))


def test_the_detector_bound_keeps_every_kept_probability_within_its_bar():
    """Where the band keeps P(fake), a logit moved by the bound moves P by at most 0.01, and 5% more does not."""
    from ganorigin.accel.probe import MAX_KEPT_PROBABILITY_DELTA, detector_logit_bound

    assert detector_logit_bound(0.0) == pytest.approx(0.04, abs=1e-4)
    assert detector_logit_bound(0.02) == pytest.approx(0.416, abs=1e-3)  # the default band
    for band in (0.0, 0.005, 0.02, 0.1, 0.2, 0.3, 0.45, 0.499):
        bound = detector_logit_bound(band)
        assert _worst_kept_move(band, bound) <= MAX_KEPT_PROBABILITY_DELTA + 1e-9, band
        assert _worst_kept_move(band, 1.05 * bound) > MAX_KEPT_PROBABILITY_DELTA, band


@pytest.mark.parametrize("band", [0.02, 0.1])
def test_the_exact_band_widens_just_enough_for_the_noise_and_refuses_past_the_widest(band):
    """A fast detector as noisy as ``noise`` keeps ``band`` while NOISE_MARGIN times its noise moves no kept P(fake)
    more than 0.01; noisier, the band widens to the narrowest that still holds that; past WIDEST_EXACT_BAND,
    nothing holds it (``None``)."""
    from ganorigin.accel.probe import (MAX_KEPT_PROBABILITY_DELTA, NOISE_MARGIN, WIDEST_EXACT_BAND, exact_band,
                                       noise_bound)

    widened = []
    for noise in np.linspace(0.0, noise_bound(band), 25):
        edge = exact_band(band, noise)
        assert WIDEST_EXACT_BAND - 1e-12 <= edge <= band
        assert _worst_kept_move(edge, NOISE_MARGIN * noise) <= MAX_KEPT_PROBABILITY_DELTA + 1e-9, noise
        if edge < band:
            widened.append(noise)
            assert _worst_kept_move(edge * 1.05, NOISE_MARGIN * noise) > MAX_KEPT_PROBABILITY_DELTA, noise
    assert 0 < len(widened) < 24  # some noise is absorbed by the band as it is, some needs it wider
    assert exact_band(band, noise_bound(band)) == pytest.approx(WIDEST_EXACT_BAND)
    assert exact_band(band, noise_bound(band) * 1.01) is None and exact_band(band, math.nan) is None


def test_with_the_second_look_off_the_noise_must_stay_within_the_bound_at_one_half():
    from ganorigin.accel.probe import NOISE_MARGIN, detector_logit_bound, exact_band, noise_bound

    assert noise_bound(0.0) == pytest.approx(detector_logit_bound(0.0) / NOISE_MARGIN)
    assert exact_band(0.0, noise_bound(0.0)) == 0.0 and exact_band(0.0, noise_bound(0.0) * 1.01) is None


@needs_bf16
def test_with_the_second_look_off_a_logit_move_the_band_allowed_is_refused_even_when_cached(weights_dir, monkeypatch,
                                                                                            tmp_path):
    """int8 made to move the logit by 0.07: kept with the default band (which absorbs 2.5 times that),
    refused with ``GANORIGIN_EXACT_BORDERLINE=0`` (noise up to 0.016), the verdict cached under the band judged
    again without a probe."""
    from ganorigin.factory import detector_logits, load_detector
    from ganorigin.testing import CLIP_FILE, UFD_HEAD_FILE

    monkeypatch.setenv("GANORIGIN_CACHE_DIR", str(tmp_path))
    files = [weights_dir / CLIP_FILE, weights_dir / UFD_HEAD_FILE]
    model = load_detector(*files)

    def scores(module, images):
        return detector_logits(module, images) + (0.07 if accel.precision_of(module) == "int8" else 0.0)

    assert accel.precision_of(accel.accelerate(model, torch.device("cpu"), "int8", scores, kind="detector",
                                               weight_files=files)) == "int8"
    monkeypatch.setenv("GANORIGIN_EXACT_BORDERLINE", "0")
    again = accel.accelerate(model, torch.device("cpu"), "int8", lambda m, i: pytest.fail("the probe ran again"),
                             kind="detector", weight_files=files)
    assert again is model
    monkeypatch.setenv("GANORIGIN_CACHE_DIR", str(tmp_path / "fresh"))
    assert accel.accelerate(model, torch.device("cpu"), "int8", scores, kind="detector", weight_files=files) is model


def test_a_noisier_fast_detector_gets_a_wider_exact_band(weights_dir, monkeypatch, tmp_path, caplog):
    """int8 made to move each probe view's logit by +-0.3 (noise 0.3, which the default band's 0.416 cannot
    absorb 2.5 times): ``create_detector`` keeps int8, scores again exactly the band that noise needs and says so;
    noise 0.5 is refused (fp32)."""
    import hashlib
    import logging

    from ganorigin import WeightSources, factory
    from ganorigin.accel.probe import exact_band
    from ganorigin.testing import UFD_HEAD_FILE

    sources = WeightSources(weights_dir=str(weights_dir), local_files_only=True,
                            ufd_head_sha256=hashlib.sha256((weights_dir / UFD_HEAD_FILE).read_bytes()).hexdigest())
    exact_logits = factory.detector_logits
    for noise, refused in ((0.3, False), (0.5, True)):
        monkeypatch.setenv("GANORIGIN_CACHE_DIR", str(tmp_path / str(noise)))

        def noisy(module, images, batch=1, noise=noise):
            signs = np.where(np.arange(len(images)) % 2 == 0, 1.0, -1.0)
            return exact_logits(module, images, batch) + (noise * signs if accel.precision_of(module) == "int8" else 0)

        monkeypatch.setattr(factory, "detector_logits", noisy)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ganorigin.factory"):
            detector = factory.create_detector(sources=sources, pretrained=True, device="cpu", precision="int8")
        if refused:
            assert accel.precision_of(detector) == "fp32"
            continue
        assert accel.precision_of(detector) == "int8" and isinstance(detector, accel.BorderlineExact)
        measured = detector.fast.agreement["noise"]
        assert measured == pytest.approx(noise, abs=0.05)
        assert detector.band == exact_band(accel.borderline_band(), measured) < 0.015
        assert f"P(fake) between {detector.band:.4f} and {1 - detector.band:.4f} is scored again" in caplog.text


def test_a_cached_verdict_that_is_not_a_measurement_is_probed_again(weights_dir, monkeypatch, tmp_path):
    """A cache entry that is not what the probe writes (a damaged file) counts as none: the probe runs again."""
    from ganorigin.factory import detector_logits, load_detector
    from ganorigin.testing import CLIP_FILE, UFD_HEAD_FILE

    monkeypatch.setenv("GANORIGIN_CACHE_DIR", str(tmp_path))
    files = [weights_dir / CLIP_FILE, weights_dir / UFD_HEAD_FILE]
    model = load_detector(*files)
    accel.accelerate(model, torch.device("cpu"), "int8", detector_logits, kind="detector", weight_files=files)
    cache = tmp_path / "ganorigin" / "precision-checks.json"
    cache.write_text(json.dumps({key: "ok" for key in json.loads(cache.read_text())}))
    probed = []

    def scores(module, images):
        probed.append(module)
        return detector_logits(module, images)

    fast = accel.accelerate(model, torch.device("cpu"), "int8", scores, kind="detector", weight_files=files)
    assert accel.precision_of(fast) == "int8" and len(probed) == 2
    assert all(isinstance(check, dict) and check["ok"] for check in json.loads(cache.read_text()).values())


@needs_bf16
def test_a_path_that_disagrees_falls_back_to_the_next_and_both_verdicts_are_cached(weights_dir, monkeypatch, tmp_path):
    """int8 made to disagree (its scores shifted by 0.5): the detector ends in bf16, the next in
    line; a second start reads both verdicts and runs no probe."""
    from ganorigin.factory import detector_scores, load_detector
    from ganorigin.testing import CLIP_FILE, UFD_HEAD_FILE

    monkeypatch.setenv("GANORIGIN_CACHE_DIR", str(tmp_path))
    files = [weights_dir / CLIP_FILE, weights_dir / UFD_HEAD_FILE]
    model = load_detector(*files)

    def scores(module, images):
        shift = 0.5 if accel.precision_of(module) == "int8" else 0.0
        return detector_scores(module, images) + shift

    fast = accel.accelerate(model, torch.device("cpu"), ("int8", "bf16"), scores, kind="detector", weight_files=files)
    assert accel.precision_of(fast) == "bf16"
    checks = json.loads((tmp_path / "ganorigin" / "precision-checks.json").read_text())
    assert sorted((c["ok"], round(c["max_delta"], 1)) for c in checks.values()) == [(False, 0.5), (True, 0.0)]

    def no_probe(module, images):
        raise AssertionError("the probe ran again")

    again = accel.accelerate(model, torch.device("cpu"), ("int8", "bf16"), no_probe, kind="detector", weight_files=files)
    assert accel.precision_of(again) == "bf16"
    assert accel.precision_of(accel.accelerate(model, torch.device("cpu"), "int8", no_probe, kind="detector",
                                               weight_files=files)) == "fp32"


def test_each_refused_path_is_logged_in_words_and_only_the_fall_back_to_fp32_as_a_warning(weights_dir, monkeypatch,
                                                                                          tmp_path, caplog):
    """int8 made to disagree on every way of running attention: each refusal says what moved and the bound,
    at INFO while another path is left; the last, which leaves the model in fp32, is a warning."""
    import logging

    from ganorigin.factory import detector_scores, load_detector
    from ganorigin.testing import CLIP_FILE, UFD_HEAD_FILE

    monkeypatch.setenv("GANORIGIN_CACHE_DIR", str(tmp_path))
    files = [weights_dir / CLIP_FILE, weights_dir / UFD_HEAD_FILE]

    def scores(module, images):
        return detector_scores(module, images) + (0.5 if accel.precision_of(module) == "int8" else 0.0)

    with caplog.at_level(logging.INFO, logger="ganorigin.accel.probe"):
        fast = accel.accelerate(load_detector(*files), torch.device("cpu"), "int8", scores, kind="detector",
                                weight_files=files)
    assert accel.precision_of(fast) == "fp32"
    refused = [r for r in caplog.records if "disagrees with fp32" in r.getMessage()]
    assert len(refused) == len(accel.attention_paths("int8"))
    assert [r.levelno for r in refused] == [logging.INFO] * (len(refused) - 1) + [logging.WARNING]
    for record in refused:
        message = record.getMessage()
        moved = re.search(r"UFD's logit moved ([0-9.]+) in root mean square over 5 probe views", message)
        assert message.startswith("UFD's CLIP in int8") and moved, message
        assert float(moved[1]) == pytest.approx(0.5, abs=0.05), "the 0.5 added, plus int8's own small difference"
        assert "allowed" in message and "{" not in message, message
    assert refused[-1].getMessage().endswith("it runs exact fp32.")

    caplog.clear()  # a second start reads the verdicts and says the same, without probing
    with caplog.at_level(logging.INFO, logger="ganorigin.accel.probe"):
        again = accel.accelerate(load_detector(*files), torch.device("cpu"), "int8",
                                 lambda m, i: pytest.fail("the probe ran again"), kind="detector", weight_files=files)
    assert accel.precision_of(again) == "fp32"
    cached = [r for r in caplog.records if "disagrees with fp32 on the probe of an earlier start" in r.getMessage()]
    assert [r.levelno for r in cached] == [r.levelno for r in refused]
    assert [r.getMessage().split("(", 2)[-1] for r in cached] == [r.getMessage().split("(", 2)[-1] for r in refused]


def test_an_accepted_fast_path_is_logged_with_what_the_probe_measured(weights_dir, monkeypatch, tmp_path, caplog):
    """At INFO: which path a model runs and how far it moved, on a first start and (from the cache) on the next."""
    import logging

    from ganorigin.factory import detector_logits, load_detector
    from ganorigin.testing import CLIP_FILE, UFD_HEAD_FILE

    monkeypatch.setenv("GANORIGIN_CACHE_DIR", str(tmp_path))
    files = [weights_dir / CLIP_FILE, weights_dir / UFD_HEAD_FILE]
    for probe in ("the probe (", "the probe of an earlier start ("):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ganorigin.accel.probe"):
            fast = accel.accelerate(load_detector(*files), torch.device("cpu"), "int8", detector_logits,
                                    kind="detector", weight_files=files)
        accepted = [r.getMessage() for r in caplog.records if "agrees with fp32" in r.getMessage()]
        noise = fast.agreement["noise"]
        assert accepted == [message for message in accepted if probe in message and f"moved {noise:.4f}" in message]
        assert len(accepted) == 1 and accepted[0].startswith("UFD's CLIP runs int8"), accepted


def test_the_probe_image_is_a_real_face_from_a_dependency_and_synthetic_without_it(monkeypatch):
    """Grace Hopper's portrait from matplotlib's sample data; an install without it gets the synthetic image."""
    import matplotlib.cbook

    from ganorigin.accel.probe import probe_images, synthetic_probe_image

    face = probe_images()
    assert len(face) == 1 and face[0].mode == "RGB" and face[0].size == (512, 600)
    views = probe_images("detector")
    assert np.array_equal(np.asarray(views[0]), np.asarray(face[0])) and all(v.mode == "RGB" for v in views)
    pixels = {np.asarray(v.resize((64, 64))).tobytes() for v in views}
    assert len(views) == len(pixels) == 5, "five different views"
    assert np.array_equal(np.asarray(views[-1]), np.asarray(synthetic_probe_image()))
    assert [np.asarray(v).tobytes() for v in probe_images("commfor")] == [np.asarray(v).tobytes() for v in views]
    assert len(probe_images("encoder")) == 1

    def missing(name, asfileobj=True):
        raise FileNotFoundError(name)

    monkeypatch.setattr(matplotlib.cbook, "get_sample_data", missing)
    synthetic = probe_images()
    assert np.array_equal(np.asarray(synthetic[0]), np.asarray(synthetic_probe_image()))
    assert not np.array_equal(np.asarray(synthetic[0].resize(face[0].size)), np.asarray(face[0]))


@pytest.mark.parametrize("kind", ["detector", "encoder", "commfor"])
def test_the_probe_compares_the_features_each_score_is_computed_from(kind, weights_dir):
    """The head's input for the detectors (CLIP's embedding, Community Forensics' pooled token), e4e's codes."""
    from ganorigin.accel.probe import KINDS, probe_images, scores_and_features
    from ganorigin.factory import commfor_scores, detector_logits, encode, load_commfor, load_detector, load_encoder
    from ganorigin.hub.registry import COMMFOR_PREPROCESS, E4E_PREPROCESS, UFD_PREPROCESS
    from ganorigin.testing import CLIP_FILE, COMMFOR_FILE, E4E_FILE, UFD_HEAD_FILE

    images = probe_images()
    if kind == "detector":
        model, scores = load_detector(weights_dir / CLIP_FILE, weights_dir / UFD_HEAD_FILE), detector_logits
        expected = lambda x: model.forward_features(x)  # noqa: E731
        x = UFD_PREPROCESS(images[0])[None]
    elif kind == "encoder":
        model = load_encoder(weights_dir / E4E_FILE)
        scores, expected = encode, model
        x = E4E_PREPROCESS(images[0])[None]
    else:
        model, scores = load_commfor(weights_dir / COMMFOR_FILE), commfor_scores
        expected = lambda x: model.vit.forward_head(model.vit.forward_features(x), pre_logits=True)  # noqa: E731
        x = COMMFOR_PREPROCESS[model.input_size](images[0])[None]
    got_scores, features = scores_and_features(model, scores, images, KINDS[kind][3])
    with torch.inference_mode():
        want = expected(x).flatten(1).numpy()
    np.testing.assert_allclose(got_scores, scores(model, images))
    np.testing.assert_allclose(features, want, rtol=1e-5, atol=1e-6)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # hooks removed


def test_a_fast_path_whose_features_move_is_refused_though_its_scores_do_not(weights_dir, monkeypatch, tmp_path):
    """With a head that reads nothing (weight 0), int8 leaves the logit exactly as fp32's, so no score bound sees
    the int8 rounding; the bound on the features' relative error does: refused below the error int8 makes,
    kept above it."""
    from ganorigin.accel.probe import KINDS, probe_images, relative_error, scores_and_features
    from ganorigin.factory import detector_logits, load_detector
    from ganorigin.testing import CLIP_FILE, UFD_HEAD_FILE

    model = load_detector(weights_dir / CLIP_FILE, weights_dir / UFD_HEAD_FILE)
    model.fc.weight.data.zero_()
    cpu = torch.device("cpu")
    int8 = accel.fast_detector(model, cpu, "int8", attention=accel.attention_paths("int8")[-1])  # the probe's last try
    head = KINDS["detector"][3]
    (exact, features), (fast, fast_features) = (scores_and_features(m, detector_logits, probe_images(), head)
                                                for m in (model, int8))
    assert np.array_equal(exact, fast)
    error = relative_error(features, fast_features)
    assert error > 0
    monkeypatch.setenv("GANORIGIN_CACHE_DIR", str(tmp_path))
    for bound, expected in ((error / 2, "fp32"), (error * 2, "int8")):
        monkeypatch.setattr(accel.probe, "MAX_FEATURE_RELATIVE_ERROR", bound)
        chosen = accel.accelerate(model, cpu, "int8", detector_logits, kind="detector")
        assert accel.precision_of(chosen) == expected


def test_relative_error_is_the_worst_rows():
    from ganorigin.accel.probe import relative_error

    reference = np.array([[3.0, 4.0], [1.0, 0.0]])
    assert relative_error(reference, reference) == 0
    assert relative_error(reference, reference + [[0.5, 0.0], [0.0, 0.2]]) == pytest.approx(0.2)
