"""Compiled U-Nets for serving (prunekit.unet.compile, PromptRoutedPipeline.compile): a compiled pruned
expert computes what the eager one does, stays the same diffusers model, and the mixture compiles every
expert and its teacher.

Most tests compile with the ``aot_eager`` backend: it runs dynamo's capture and AOTAutograd's tracing
(the graph the Inductor kernels are generated from) in seconds; Inductor itself, which builds C++
kernels on the CPU (~80 s for one tiny U-Net on 2 cores), is the slow-tier test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("single_thread")


class OneExpertRouter:
    def route(self, z):
        return torch.zeros(z.shape[0], dtype=torch.long)


class NullEncoder:
    def encode(self, prompts):
        return torch.zeros(len(prompts), 1)


@pytest.fixture(autouse=True)
def default_recompile_limit():
    # compile_unet raises dynamo's process-wide limit; each test starts from torch's default and the
    # value is restored afterwards (torch's own config patching), so no other test sees the change.
    import torch._dynamo.config as dynamo_config

    with dynamo_config.patch(recompile_limit=8):
        yield


@pytest.fixture
def tiny():
    """A tiny SD pipeline and two physically pruned experts of its U-Net."""
    from prunekit.tiny import build_tiny_pipeline
    from prunekit.unet import make_prunable, physically_prune

    base = build_tiny_pipeline(0)
    prunable = make_prunable(base.unet)
    g = torch.Generator().manual_seed(0)
    experts = [physically_prune(prunable, torch.rand(prunable.num_units, generator=g) > p).eval() for p in (0.6, 0.2)]
    prunable.restore()
    return base, experts


def _inputs(unet):
    from prunekit.unet.macs import example_inputs

    return example_inputs(unet, height=8, width=8, text_len=7, batch=2, generator=torch.Generator().manual_seed(1))


def _compiled_matches_eager(expert, **settings):
    from prunekit.unet.compile import compile_unet, is_compiled, uncompile

    args, kwargs = _inputs(expert)
    keys = list(expert.state_dict())
    config = dict(expert.config)
    with torch.no_grad():
        eager = expert(*args, **kwargs).sample
        assert compile_unet(expert, fullgraph=True, **settings) is expert
        assert is_compiled(expert)
        compiled = expert(*args, **kwargs).sample
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    # Still the diffusers model a pipeline expects: same class, config, weights' names, dtype, device.
    assert type(expert).__name__ == "PrunedUNet2DConditionModel"
    assert dict(expert.config) == config and list(expert.state_dict()) == keys
    assert expert.dtype == torch.float32 and expert.device.type == "cpu"
    uncompile(expert)
    assert not is_compiled(expert)


def test_compiled_pruned_expert_matches_eager_and_keeps_its_diffusers_face(tiny):
    import torch._dynamo.config as dynamo_config

    _, experts = tiny
    _compiled_matches_eager(experts[0], backend="aot_eager")
    assert dynamo_config.recompile_limit == 64  # raised: every expert shares the forward's cache


@pytest.mark.slow
def test_inductor_compiled_pruned_expert_matches_eager(tiny):
    _, experts = tiny
    _compiled_matches_eager(experts[1], mode="default")


def test_unknown_mode_is_refused(tiny):
    from prunekit.unet.compile import compile_unet, is_compiled

    _, experts = tiny
    with pytest.raises(ValueError, match="unknown compile mode 'fast'.*reduce-overhead"):
        compile_unet(experts[0], mode="fast")
    assert not is_compiled(experts[0])


def test_mixture_compile_compiles_every_expert_and_the_teacher_and_samples_the_same(tiny):
    from torch._dynamo.utils import counters

    from prunekit.pipeline import PromptRoutedPipeline
    from prunekit.unet.compile import is_compiled

    base, experts = tiny
    pipe = PromptRoutedPipeline.from_parts(base, NullEncoder(), OneExpertRouter(), experts)
    pipe.set_progress_bar_config(disable=True)
    call = dict(num_inference_steps=1, height=16, width=16, output_type="np", seed=0)
    before = pipe(["a", "b"], experts=[0, 1], **call).images
    assert pipe.compile(backend="aot_eager") is pipe
    assert [is_compiled(e) for e in pipe.experts] == [True, True]
    assert is_compiled(pipe.teacher.unet)
    graphs = counters["stats"]["unique_graphs"]
    after = pipe(["a", "b"], experts=[0, 1], **call).images
    np.testing.assert_allclose(after, before, atol=1e-4)
    # the diffusers sampling loop really ran the compiled forwards: one new graph per expert
    assert counters["stats"]["unique_graphs"] - graphs == 2


def test_mixture_compile_without_teacher_leaves_it_eager(tiny):
    from prunekit.pipeline import PromptRoutedPipeline
    from prunekit.unet.compile import is_compiled

    base, experts = tiny
    pipe = PromptRoutedPipeline.from_parts(base, NullEncoder(), OneExpertRouter(), experts)
    pipe.compile(teacher=False, backend="aot_eager")
    assert [is_compiled(e) for e in pipe.experts] == [True, True]
    assert not is_compiled(pipe.teacher.unet)


def test_cuda_graphs_are_refused_with_cpu_offload(tiny):
    from prunekit.pipeline import PromptRoutedPipeline
    from prunekit.unet.compile import is_compiled

    base, experts = tiny
    pipe = PromptRoutedPipeline.from_parts(base, NullEncoder(), OneExpertRouter(), experts)
    pipe.enable_model_cpu_offload(device="cpu")
    with pytest.raises(ValueError, match="CUDA graphs.*offload"):
        pipe.compile(mode="reduce-overhead")
    assert not any(is_compiled(e) for e in pipe.experts)


def test_counting_macs_of_a_compiled_unet_leaves_it_compiling_new_shapes(tiny):
    # Regression: tracing the compiled forward under FakeTensorMode + FlopCounterMode made later calls
    # at new shapes run eagerly, never recompiling (the MAC count must use the eager forward).
    from torch._dynamo.utils import counters

    from prunekit.unet.compile import compile_unet
    from prunekit.unet.macs import example_inputs, measure_macs

    base, _ = tiny
    macs_eager = measure_macs(base.unet, height=16, width=16)
    unet = compile_unet(base.unet.eval(), backend="aot_eager")
    with torch.no_grad():
        unet(*_inputs(unet)[0], **_inputs(unet)[1])
        assert measure_macs(unet, height=16, width=16) == macs_eager
        graphs = counters["stats"]["unique_graphs"]
        args, kwargs = example_inputs(unet, height=16, width=16, text_len=7, batch=1)
        unet(*args, **kwargs)
    assert counters["stats"]["unique_graphs"] == graphs + 1
