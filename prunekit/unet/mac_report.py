"""Print the dense MAC figures quoted in docs/unet.md (SD 2.1 U-Net, meta device, a few seconds).

    .venv/bin/python -m prunekit.unet.mac_report [--latents 96 32] [--text-len 77]
"""

from __future__ import annotations

import argparse

import torch

from .configs import sd15_unet_config, sd21_unet_config, sdxl_unet_config
from .gating import make_prunable
from .macs import macs_by_op, paper_convention_macs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latents", type=int, nargs="+", default=[96, 64, 32])
    parser.add_argument("--text-len", type=int, default=77)
    args = parser.parse_args()
    # From diffusers.models: mypy resolves diffusers' top-level names to its dummy (no-torch) classes.
    from diffusers.models import UNet2DConditionModel

    configs = {"SD 1.5": sd15_unet_config(), "SD 2.1": sd21_unet_config(), "SDXL": sdxl_unet_config()}
    for name, config in configs.items():
        with torch.device("meta"):
            unet = UNet2DConditionModel(**config)
        prunable = make_prunable(unet)
        print(f"\n{name}: {prunable.num_units} prunable units with depth='aptp'")
        for latent in args.latents:
            by_op = macs_by_op(unet, height=latent, width=latent, text_len=args.text_len)
            total = sum(by_op.values())
            attention = by_op.get("aten.bmm", 0) + by_op.get("aten.baddbmm", 0)
            print(f"  latent {latent}x{latent} ({latent * 8} px), {args.text_len} tokens: {total / 1e9:.1f} GMACs "
                  f"= conv {by_op.get('aten.convolution', 0) / 1e9:.1f} + linear "
                  f"{(by_op.get('aten.addmm', 0) + by_op.get('aten.mm', 0)) / 1e9:.1f} + attention matmuls "
                  f"{attention / 1e9:.1f}; without attention matmuls {(total - attention) / 1e9:.1f}")
            if name == "SD 2.1":
                paper = paper_convention_macs(unet, height=latent, width=latent, text_len=args.text_len)
                print("    APTP-counter convention: "
                      f"{paper['total_paper_convention'] / 1e9:.1f} G = conv {paper['conv'] / 1e9:.1f} + linear "
                      f"{paper['linear'] / 1e9:.1f} + attention with query length as key length "
                      f"{paper['attention_as_counted'] / 1e9:.1f} (true: {paper['attention_true'] / 1e9:.1f}) + "
                      f"bias {paper['bias'] / 1e9:.2f} + elementwise {paper['elementwise'] / 1e9:.2f}")
        prunable.restore()


if __name__ == "__main__":
    main()
