"""2:4 semi-structured export (prunekit.ops.semi_structured): the pattern check, which Linear layers are
eligible, the clear refusal off the GPU, and (with a CUDA GPU of compute capability 8.0+) the converted
module against the masked dense one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.usefixtures("single_thread")


def _prune_2to4(weight: torch.Tensor) -> torch.Tensor:
    from prunekit.ops.masks import magnitude_scores, nm_prune_mask

    with torch.no_grad():
        weight[nm_prune_mask(magnitude_scores(weight), 2, 4)] = 0
    return weight


def test_check_2to4_counts_groups_with_more_than_two_nonzeros():
    from prunekit.ops.semi_structured import check_2to4, count_2to4_violations

    w = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0],
                      [0.0, 1.0, 1.0, 0.0, 5.0, 6.0, 0.0, 0.0]])
    assert check_2to4(w) and count_2to4_violations(w) == 0
    w[1, 0] = 4.0  # row 1, first group: three non-zeros
    assert not check_2to4(w) and count_2to4_violations(w) == 1
    w[0, 5] = w[0, 6] = 1.0  # row 0, second group: four
    assert count_2to4_violations(w) == 2
    # groups run along the input dimension of each row, not down the columns
    assert check_2to4(torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 4)) and not check_2to4(torch.ones(4, 4))
    assert not check_2to4(torch.zeros(2, 6))  # no whole groups of 4
    with pytest.raises(ValueError, match="2-D"):
        count_2to4_violations(torch.zeros(2, 4, 1))


def test_magnitude_2to4_mask_passes_the_check():
    from prunekit.ops.semi_structured import check_2to4

    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    assert not check_2to4(w)
    assert check_2to4(_prune_2to4(w)) and int((w != 0).sum()) == w.numel() // 2


class Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Linear(64, 32)        # 2:4 pruned, shape fits both backends
        self.ffn = nn.Linear(128, 64)        # 2:4 pruned, fits both
        self.dense = nn.Linear(64, 32)       # not pruned: must stay dense
        self.narrow = nn.Linear(48, 32)      # 2:4, but 48 columns: cuSPARSELt yes (16), CUTLASS no (64)
        self.time = nn.Linear(64, 16)        # 2:4, 16 rows: cuSPARSELt yes, CUTLASS no (32)
        self.conv = nn.Conv2d(64, 64, 1)     # not a Linear: never a candidate
        self.head = nn.Linear(64, 32)        # 2:4, excluded by pattern in one test
        for layer in (self.attn, self.ffn, self.narrow, self.time, self.head):
            _prune_2to4(layer.weight)


def test_plan_selects_2to4_linears_whose_shape_fits_the_backend():
    from prunekit.ops.semi_structured import plan_semi_structured

    model = Blocks()
    lt = plan_semi_structured(model, backend="cusparselt", dtype=torch.float16)
    assert lt.backend == "cusparselt"
    assert lt.converted == ["attn", "ffn", "narrow", "time", "head"]
    assert list(lt.skipped) == ["dense"] and lt.skipped["dense"].startswith("not 2:4: 512 of 512 groups")

    cutlass = plan_semi_structured(model, backend="cutlass", dtype=torch.float16, exclude=["he*"])
    assert cutlass.converted == ["attn", "ffn"]
    assert cutlass.skipped["narrow"] == "shape: 32x48 is not a multiple of 32x64 (cutlass, torch.float16)"
    assert cutlass.skipped["time"].startswith("shape: 16x64")
    assert cutlass.skipped["head"].startswith("excluded")
    assert cutlass.summary() == ("2:4 (cutlass): 2 Linear layers converted, 4 skipped "
                                 "(2 shape, 1 not 2:4, 1 excluded)")

    small = plan_semi_structured(model, backend="cusparselt", dtype=torch.bfloat16, min_features=32)
    assert small.converted == ["attn", "ffn", "narrow", "head"] and small.skipped["time"].startswith("small")
    # fp32 weights planned as they are: semi-structured tensors of this torch take fp16/bf16 only
    assert plan_semi_structured(model, backend="cusparselt").converted == []


def test_plan_on_a_2to4_pruned_tiny_unet_covers_its_attention_and_ffn_linears():
    from prunekit.ops.semi_structured import check_2to4, plan_semi_structured
    from prunekit.tiny import build_tiny_pipeline

    unet = build_tiny_pipeline(0).unet
    linears = {name: m for name, m in unet.named_modules() if isinstance(m, nn.Linear)}
    for name, layer in linears.items():
        if ".attn" in name or ".ff." in name:
            _prune_2to4(layer.weight)
    report = plan_semi_structured(unet, backend="cusparselt", dtype=torch.float16)
    pruned = {name for name in linears if ".attn" in name or ".ff." in name}
    # the tiny U-Net's attention and FFN widths (32, 128, 256) are all multiples of cuSPARSELt's 16
    assert len(pruned) >= 10 and set(report.converted) == pruned
    assert all(check_2to4(linears[p].weight) for p in report.converted)
    # every other Linear (time embedding, proj_in/out: left dense here) is skipped as not 2:4
    assert set(report.skipped) == set(linears) - pruned
    assert all(why.startswith("not 2:4") for why in report.skipped.values())


def test_conversion_off_the_gpu_is_one_clear_error():
    from prunekit.ops.semi_structured import SemiStructuredError, to_semi_structured

    model = Blocks()
    with pytest.raises(SemiStructuredError, match=r"CUDA GPU .*compute capability 8\.0.* fp16 or bf16.*cpu torch\.float32"):
        to_semi_structured(model)
    with pytest.raises(SemiStructuredError, match="cpu torch.float16"):
        to_semi_structured(model.half())
    assert isinstance(model.attn.weight, nn.Parameter) and model.attn.weight.layout == torch.strided
    with pytest.raises(SemiStructuredError, match="unknown 2:4 backend 'tensorrt'"):
        to_semi_structured(model, backend="tensorrt")


def _sparse_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


@pytest.mark.skipif(not _sparse_gpu(), reason="needs a CUDA GPU of compute capability 8.0+")
def test_converted_linears_compute_the_masked_dense_output_on_the_gpu():
    from prunekit.ops.semi_structured import to_semi_structured

    torch.manual_seed(0)
    model = Blocks().cuda().half().eval()
    x = torch.randn(3, 77, 64, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        dense = {name: getattr(model, name)(x) for name in ("attn", "head")}
        report = to_semi_structured(model, exclude=["head"])
        assert "attn" in report.converted and "dense" in report.skipped and "head" in report.skipped
        assert isinstance(model.attn.weight, torch.sparse.SparseSemiStructuredTensor)
        assert not isinstance(model.head.weight, torch.sparse.SparseSemiStructuredTensor)
        sparse = model.attn(x)
        # a strided (transposed) input works too: the layer makes it contiguous
        strided = model.attn(x.transpose(0, 1).contiguous().transpose(0, 1))
    torch.testing.assert_close(sparse, dense["attn"], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(strided, dense["attn"], rtol=1e-2, atol=1e-2)
