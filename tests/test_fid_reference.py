"""prunekit's FID network against the reference implementation on the same weights.

The reference is torch-fidelity's ``FeatureExtractorInceptionV3`` (what torchmetrics' built-in FID
extractor is). torch-fidelity's package ``__init__`` imports torchvision, which must not be installed
beside the CPU torch here; ``.ci/run`` installs it with ``--no-deps --target .venv/reference`` (off the
import path: torchmetrics would import an installed torch-fidelity, and with it torchvision), and the
test imports its Inception module from there without running that ``__init__``.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from helpers import REPO, torch_threads

from prunekit.metrics import fid_inception, resize_bilinear_tf1

# Where .ci/run and the README install it: off the import path, so torchmetrics does not pick it up.
REFERENCE = REPO / ".venv" / "reference"


def _reference_module(monkeypatch):
    folder = Path(os.environ.get("PRUNEKIT_FID_REFERENCE", REFERENCE)) / "torch_fidelity"
    if not (folder / "feature_extractor_inceptionv3.py").is_file():
        pytest.skip(f"torch-fidelity not found under {folder.parent} "
                    "(pip install --no-deps --target .venv/reference torch-fidelity==0.4.0)")
    package = types.ModuleType("torch_fidelity")
    package.__path__ = [str(folder)]
    monkeypatch.setitem(sys.modules, "torch_fidelity", package)
    for name in list(sys.modules):
        if name.startswith("torch_fidelity."):
            monkeypatch.delitem(sys.modules, name)
    return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    with torch_threads(2):
        yield


def test_fid_features_equal_torch_fidelity_on_the_same_weights(tmp_path, monkeypatch):
    reference_module = _reference_module(monkeypatch)
    torch.manual_seed(0)
    ours = fid_inception().eval()
    # Random weights, with batch-norm statistics away from the identity so every layer matters.
    with torch.no_grad():
        for module in ours.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    state = dict(ours.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.randn(1008, 2048) * 0.01, torch.zeros(1008)  # the graph's head
    torch.save(state, tmp_path / "weights.pth")  # written here, read back by the reference loader
    reference = reference_module.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(tmp_path / "weights.pth")).eval()

    g = torch.Generator().manual_seed(1)
    for size in (256, 299, 64):  # the paper's 256 px (upsampled), native, and a downsampling case
        images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=g)
        with torch.no_grad():
            expected = reference(images)[0]
            got = ours(images)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4, msg=f"size {size}")


def test_tf1_resize_equals_the_reference_interpolation(monkeypatch):
    _reference_module(monkeypatch)
    interp = importlib.import_module("torch_fidelity.interpolate_compat_tensorflow")
    x = torch.rand(2, 3, 37, 53, generator=torch.Generator().manual_seed(0)) * 255
    for h, w in ((299, 299), (16, 20), (37, 90)):
        expected = interp.interpolate_bilinear_2d_like_tensorflow1x(x, size=(h, w), align_corners=False)
        torch.testing.assert_close(resize_bilinear_tf1(x, h, w), expected, rtol=1e-5, atol=1e-4)
