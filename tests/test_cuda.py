"""GANOrigin on a CUDA GPU: the fast path (autocast to bf16 or fp16) against exact fp32, batches, heat maps, video.

They run only where PyTorch sees a CUDA GPU and skip elsewhere, saying so (the machines CI uses have none).
The images are synthetic, so they run from a bare checkout too (``../shared`` need not be there)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ganorigin import ConfigurationError, GANOrigin
from ganorigin.explain import gradient_heatmap, occlusion_heatmap

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; PyTorch sees none here")

HALF = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp16"
MAX_PROBABILITY_DELTA = 0.01  # the fast paths' bar against fp32, as on a CPU


@pytest.fixture(scope="module")
def images() -> list:
    """Seven pictures: six colour ramps with noise of several strengths, in odd sizes, and a grey one."""
    rng = np.random.default_rng(7)
    pictures = []
    for i, (height, width) in enumerate([(256, 256), (300, 220), (512, 384), (180, 320), (640, 640), (230, 230)]):
        ramp = np.linspace(0, 255, width)[None, :, None] * np.array([1.0, 0.6, 0.3])[None, None, :]
        noise = rng.normal(0, 8 + 12 * i, (height, width, 3))
        pictures.append(Image.fromarray(np.clip(ramp + noise + 20 * i, 0, 255).astype(np.uint8)))
    pictures.append(Image.fromarray(np.full((224, 224), 128, np.uint8), "L"))
    return pictures


@pytest.fixture(scope="module")
def cpu_exact(sources):
    return GANOrigin.from_pretrained(sources, device="cpu", precision="fp32", align=False)


@pytest.fixture(scope="module")
def gpu_exact(sources):
    return GANOrigin.from_pretrained(sources, device="cuda", precision="fp32", align=False)


@pytest.fixture(scope="module")
def gpu_auto(sources):
    return GANOrigin.from_pretrained(sources, device="cuda", align=False)


def _close(ours: list, reference: list, bound: float) -> None:
    """Same verdicts and attributions, P(fake) of both detectors within ``bound``."""
    assert [p.is_fake for p in ours] == [p.is_fake for p in reference]
    assert [p.attribution_label for p in ours] == [p.attribution_label for p in reference]
    np.testing.assert_allclose([p.fake_probability for p in ours], [p.fake_probability for p in reference], atol=bound)
    np.testing.assert_allclose([p.commfor_probability for p in ours], [p.commfor_probability for p in reference],
                               atol=bound)


def test_auto_on_a_gpu_runs_every_model_on_it_in_its_native_half_precision(gpu_auto):
    assert gpu_auto.device.type == "cuda"
    assert gpu_auto.precisions == {"detector": HALF, "encoder": HALF, "commfor": HALF}
    for model in (gpu_auto.detector, gpu_auto.encoder, gpu_auto.commfor):
        assert all(p.is_cuda for p in model.parameters())


def test_exact_fp32_on_a_gpu_gives_the_cpus_answers(gpu_exact, cpu_exact, images):
    gpu, cpu = [gpu_exact.predict(im) for im in images], [cpu_exact.predict(im) for im in images]
    _close(gpu, cpu, 1e-3)  # cuDNN's convolutions use TF32 by default, as the original app's did
    np.testing.assert_allclose([p.probabilities for p in gpu], [p.probabilities for p in cpu], atol=1e-2)


def test_the_fast_path_on_a_gpu_agrees_with_fp32_there(gpu_auto, gpu_exact, images):
    _close([gpu_auto.predict(im) for im in images], [gpu_exact.predict(im) for im in images], MAX_PROBABILITY_DELTA)


def test_forced_fp16_on_a_gpu_runs_in_fp16_and_agrees(sources, gpu_exact, images):
    fp16 = GANOrigin.from_pretrained(sources, device="cuda", precision="fp16", align=False)
    assert fp16.precisions == {"detector": "fp16", "encoder": "fp16", "commfor": "fp16"}
    _close([fp16.predict(im) for im in images], [gpu_exact.predict(im) for im in images], MAX_PROBABILITY_DELTA)


def test_a_batch_on_a_gpu_gives_each_image_the_answer_it_gets_alone(gpu_auto, images):
    alone = [gpu_auto.predict(im) for im in images]
    together = gpu_auto.predict_batch(images, batch_size=len(images))
    _close(together, alone, 2e-3)  # other batch shapes may pick other kernels, hence not bitwise


def test_int8_is_refused_on_a_gpu_with_the_precisions_it_can_use(sources):
    with pytest.raises(ConfigurationError, match="int8.*for CPUs.*'bf16', 'fp16'"):
        GANOrigin.from_pretrained(sources, device="cuda", precision="int8", align=False)


def test_the_occlusion_heat_map_on_a_gpu_is_the_cpus(gpu_exact, cpu_exact, images):
    gpu, cpu = occlusion_heatmap(gpu_exact.detector, images[0]), occlusion_heatmap(cpu_exact.detector, images[0])
    assert gpu.fake_probability == pytest.approx(cpu.fake_probability, abs=1e-3)
    np.testing.assert_allclose(gpu.values, cpu.values, atol=2e-3)


def test_the_gradient_heat_map_runs_through_the_gpus_fast_detector(gpu_auto, gpu_exact, images):
    fast, exact = gradient_heatmap(gpu_auto.detector, images[1]), gradient_heatmap(gpu_exact.detector, images[1])
    assert fast.values.shape == exact.values.shape == (224, 224) and np.isfinite(fast.values).all()
    assert fast.fake_probability == pytest.approx(exact.fake_probability, abs=MAX_PROBABILITY_DELTA)


def test_a_video_on_a_gpu_gets_the_cpus_frame_scores(gpu_auto, cpu_exact, images):
    from video_files import write_clip

    clip = write_clip([(images[0], 1.0), (images[2], 1.0)])
    gpu, cpu = gpu_auto.predict_video(io.BytesIO(clip), fps=2), cpu_exact.predict_video(io.BytesIO(clip), fps=2)
    assert len(gpu.frames) == len(cpu.frames) >= 2
    np.testing.assert_allclose([f.prediction.fake_probability for f in gpu.frames],
                               [f.prediction.fake_probability for f in cpu.frames], atol=MAX_PROBABILITY_DELTA)


def _fast(model):
    """The converted model under a :class:`BorderlineExact` (itself when there is none)."""
    return getattr(model, "fast", model)


@pytest.mark.parametrize("name", ["detector", "encoder", "commfor"])
def test_each_fast_model_replays_cuda_graphs_that_give_its_eager_numbers(gpu_auto, images, name):
    from ganorigin.accel.convert import base_model
    from ganorigin.hub.registry import COMMFOR_PREPROCESS, E4E_PREPROCESS, UFD_PREPROCESS

    fast = _fast(getattr(gpu_auto, name))
    preprocess = {"detector": UFD_PREPROCESS, "encoder": E4E_PREPROCESS}.get(name) or COMMFOR_PREPROCESS[
        base_model(fast).input_size]
    x = torch.stack([preprocess(im.convert("RGB")) for im in images[:3]]).cuda()
    with torch.inference_mode():
        before = len(fast.graphs)
        replayed, again = fast(x), fast(x)
        eager = fast._forward(x)
    assert len(fast.graphs) == before + 1  # a new batch size: recorded once, then replayed
    assert torch.equal(replayed, again)
    torch.testing.assert_close(replayed, eager, rtol=1e-2, atol=1e-2)
    with torch.enable_grad():  # a forward that wants gradients runs as usual
        assert fast(x.clone().requires_grad_(True)).requires_grad


def test_a_model_with_hooks_runs_them_instead_of_replaying(gpu_auto, images):
    from ganorigin.hub.registry import UFD_PREPROCESS

    fast = _fast(gpu_auto.detector)
    seen = []
    hook = fast.module.fc.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        with torch.inference_mode():
            fast(UFD_PREPROCESS(images[0])[None].cuda())
    finally:
        hook.remove()
    assert len(seen) == 1 and seen[0].shape[0] == 1


def test_cuda_graphs_can_be_turned_off(sources, monkeypatch):
    monkeypatch.setenv("GANORIGIN_CUDA_GRAPHS", "0")
    model = GANOrigin.from_pretrained(sources, device="cuda", align=False)
    assert all(_fast(m).graphs is None for m in (model.detector, model.encoder, model.commfor))


def test_predictions_from_threads_at_once_are_each_their_own(gpu_auto, images):
    """Every thread's models run on the GPU's one worker: answers as one after the other, none mixed up."""
    from concurrent.futures import ThreadPoolExecutor

    alone = [gpu_auto.predict(im) for im in images]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(gpu_auto.predict, images))
    _close(together, alone, 0.0)


def test_a_gpu_number_past_the_last_is_a_configuration_error():
    from ganorigin.factory import as_device

    count = torch.cuda.device_count()
    assert as_device(f"cuda:{count - 1}") == torch.device("cuda", count - 1)
    with pytest.raises(ConfigurationError, match=f"PyTorch sees {count} CUDA GPU"):
        as_device(f"cuda:{count}")
