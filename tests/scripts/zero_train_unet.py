"""Train a tiny diffusers U-Net for a few steps through prunekit's engine; run under torchrun."""

import json
import sys

import torch

from prunekit.engine import micro_batch_indices, train
from prunekit.engine_config import EngineConfig
from prunekit.tiny import build_tiny_pipeline

stage, ckpt_dir, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
unet = build_tiny_pipeline(0).unet
torch.manual_seed(1)
latents, cond = torch.randn(16, 4, 8, 8), torch.randn(16, 12, 32)


def batch_fn(index):
    idx = micro_batch_indices(16, 2, index, seed=0)
    return latents[idx], cond[idx]


def loss_fn(model, batch, step):
    x, c = batch
    noise = torch.randn_like(x)
    t = torch.randint(0, 1000, (len(x),))
    return ((model(x + noise, t, encoder_hidden_states=c).sample - noise) ** 2).mean(), {}


result = train(unet, loss_fn, batch_fn, cfg=EngineConfig(zero_stage=stage, micro_batch=2, grad_accum=2),
               lr=1e-3, steps=3, ckpt_dir=ckpt_dir)
rank = torch.distributed.get_rank()
checksum = sum(float(v.double().sum()) for v in result.state_dict.values())
with open(f"{out}.rank{rank}.json", "w") as f:
    json.dump({"losses": [h["loss"] for h in result.history], "checksum": checksum,
               "world": torch.distributed.get_world_size()}, f)
