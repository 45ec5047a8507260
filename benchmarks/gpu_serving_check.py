"""Prepared GPU check: do compiled experts and a 2:4 U-Net realise their savings on a GPU?

(a) Compiled experts. The SD 2.1-shaped U-Net with random weights (fp16) and experts at MAC targets
(default 0.85 / 0.66 / 0.50 of the dense MACs, drawn as ``benchmarks/expert_latency.py`` does: every
width layer keeps about the same fraction, channels rounded to ``--round-to``) are timed in alternation
with the dense U-Net, first eager, then compiled the same way (``prunekit.unet.compile.compile_unet``,
every model with the same ``--modes``). Per setting (``LATENTxBATCH``) and mode: MACs ratio, latency
ratio (median of per-pair ratios), latency / MACs (target <= 1.10 at batch 16), each model's compile
seconds, and the dense model's compiled-over-eager speed-up.

(b) 2:4. A second copy of the dense U-Net gets magnitude 2:4 masks on every Linear whose shape the
semi-structured backend accepts; a copy of that masked model is converted with
``prunekit.ops.semi_structured.to_semi_structured``. Reported: the speed-up of each distinct Linear
(weight shape x input shape; inputs captured from a real forward) over its masked dense self, the
whole-step speed-up (eager, and compiled with the first compile mode when the budget allows), and the
max abs difference between the sparse and the masked dense U-Net's outputs.

Settings run in order; a wall-clock budget (``--budget-s``, default 450 s) skips a compile or a setting
that would not fit, and a setting that fails prints its error and the check goes on. Rows go to
``--out`` (default ``$OUT`` or a temp folder) as ``gpu-serving/summary.json``, rewritten after each.

    python3 benchmarks/gpu_serving_check.py                       # on a machine with a CUDA GPU
    python3 benchmarks/gpu_serving_check.py --settings 64x16 --modes max-autotune-no-cudagraphs
    OMP_NUM_THREADS=1 TORCHINDUCTOR_COMPILE_THREADS=1 python3 benchmarks/gpu_serving_check.py --device cpu

``--device cpu`` is a dry run of the script itself: a tiny U-Net, tiny latents, mode ``default``, and
the 2:4 conversion is skipped with the reason ``to_semi_structured`` gives (it needs a CUDA GPU).
Needs torch with CUDA and diffusers importable (no network: put a diffusers source tree on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# What a first compile is assumed to cost before one has been measured (SD 2.1 U-Net, Inductor on an
# H100: about a minute; an assumption for the budget only, replaced by the slowest compile measured).
FIRST_COMPILE_GUESS_S = {"cuda": 90.0, "cpu": 60.0}


class Budget:
    """Wall-clock budget: ``fits(seconds)`` says whether something that long still fits."""

    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.seconds = seconds

    @property
    def used(self) -> float:
        return time.perf_counter() - self.start

    def fits(self, needed: float) -> bool:
        return self.used + needed <= self.seconds


def build_dense(device: str, dtype: Any, seed: int) -> Any:
    import torch

    if device.startswith("cuda"):
        from prunekit.shaped import build_sd21_shaped_unet

        return build_sd21_shaped_unet(device, dtype, seed)
    # Dry run: the tiny SD-shaped U-Net (random init, fp32 on the CPU).
    from prunekit.tiny import build_tiny_pipeline, tiny_unet_config

    torch.manual_seed(seed)
    config = tiny_unet_config(block_out_channels=(32, 64), attention_head_dim=4, cross_attention_dim=64)
    unet = build_tiny_pipeline(seed, unet_config=config).unet.to(device).eval()
    return unet if dtype == torch.float32 else unet.to(dtype)


def caller(model: Any, args: tuple, kwargs: dict, *, eager: bool, cuda_graphs: bool) -> Callable[[], object]:
    import torch

    # `forward` bypasses nn.Module.__call__ and with it the compiled call compile_unet installs, so
    # one module serves both the eager and the compiled timings (the models have no hooks).
    fn = model.forward if eager else model
    if not cuda_graphs:
        return lambda: fn(*args, **kwargs)

    def run() -> object:
        # Each call is a new step for the CUDA-graph trees: the previous output is not kept.
        torch.compiler.cudagraph_mark_step_begin()
        return fn(*args, **kwargs)

    return run


def timed_first_call(fn: Callable[[], object], device: Any) -> float:
    import torch

    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


class ExpertsCheck:
    """Part (a): the dense U-Net and its experts, built once; :meth:`run` times one setting in every mode."""

    def __init__(self, args: argparse.Namespace, budget: Budget, summary: dict, save: Callable[[], None]) -> None:
        import torch
        from expert_latency import mask_for_target

        from prunekit.unet import make_prunable, physically_prune
        from prunekit.unet.latency import DTYPES

        self.args, self.budget, self.summary, self.save = args, budget, summary, save
        self.device = torch.device(args.device)
        self.dense = build_dense(args.device, DTYPES[args.dtype], args.seed)
        self.prunable = make_prunable(self.dense)
        scores = torch.rand(self.prunable.num_units, generator=torch.Generator().manual_seed(args.seed + 1))
        # Masks are chosen at the first setting's latent size; each setting reports its own MAC ratio.
        latent = int(args.settings[0].split("x")[0])
        mac_model = self.prunable.mac_model(height=latent, width=latent, text_len=77)
        self.masks = {t: mask_for_target(self.prunable, mac_model, t, scores, args.round_to) for t in args.targets}
        self.experts = {t: physically_prune(self.prunable, m).eval() for t, m in self.masks.items()}
        self.prunable.restore()  # the dense model is timed as the stock U-Net, without gating hooks
        self.models = {"dense": self.dense, **{f"{t:.2f}": e for t, e in self.experts.items()}}
        self.compiled_mode: str | None = None
        self.compile_seen: list[float] = []

    def _compile(self, mode: str) -> None:
        from prunekit.unet.compile import compile_unet

        if mode != self.compiled_mode:  # every model the same way, so the comparison is fair
            for model in self.models.values():
                compile_unet(model, mode=mode, backend=self.args.backend)
            self.compiled_mode = mode

    def run(self, setting: str) -> None:
        import statistics

        import torch

        from prunekit.unet.compile import CUDA_GRAPH_MODES
        from prunekit.unet.latency import interleaved_ratio
        from prunekit.unet.macs import example_inputs

        args, budget, device = self.args, self.budget, self.device
        latent, batch = (int(x) for x in setting.split("x"))
        macs = self.prunable.mac_model(height=latent, width=latent, text_len=77)
        inputs, kwargs = example_inputs(self.dense, height=latent, width=latent, batch=batch,
                                        generator=torch.Generator().manual_seed(args.seed))
        rows = self.summary.setdefault("experts", [])
        for mode in args.modes:
            label = f"{setting} {mode}"
            eager = mode == "eager"
            cuda_graphs = mode in CUDA_GRAPH_MODES
            try:
                compile_s: dict[str, float] = {}
                with torch.inference_mode():
                    if not eager:
                        self._compile(mode)
                        for name, model in self.models.items():
                            needed = max(self.compile_seen, default=FIRST_COMPILE_GUESS_S[device.type]) + 10
                            if not budget.fits(needed):
                                raise TimeoutError(f"compiling {name} (~{needed:.0f} s) would not fit in "
                                                   f"--budget-s {budget.seconds:.0f} ({budget.used:.0f} s used)")
                            call = caller(model, inputs, kwargs, eager=False, cuda_graphs=cuda_graphs)
                            compile_s[name] = timed_first_call(call, device)
                            self.compile_seen.append(compile_s[name])
                            print(f"  {label}: compiled {name} in {compile_s[name]:.0f} s", flush=True)
                    dense_call = caller(self.dense, inputs, kwargs, eager=eager, cuda_graphs=cuda_graphs)
                    for target, expert in self.experts.items():
                        if not budget.fits(args.min_row_s):
                            raise TimeoutError(f"out of --budget-s {budget.seconds:.0f} before target {target}")
                        dense_s, expert_s, ratio = interleaved_ratio(
                            dense_call, caller(expert, inputs, kwargs, eager=eager, cuda_graphs=cuda_graphs),
                            repeats=args.repeats, warmup=args.warmup, device=device)
                        mac_ratio = float(macs.ratio(self.masks[target].double()))
                        rows.append({"setting": setting, "latent": latent, "batch": batch, "mode": mode,
                                     "target": target, "macs_ratio": mac_ratio, "latency_ratio": ratio,
                                     "latency_over_macs": ratio / mac_ratio, "dense_ms": dense_s * 1e3,
                                     "expert_ms": expert_s * 1e3, "compile_s": compile_s.get(f"{target:.2f}"),
                                     "dense_compile_s": compile_s.get("dense")})
                        self.save()
                        print(f"  {label} target {target:.2f}: MACs {mac_ratio:.3f} latency {ratio:.3f} "
                              f"latency/MACs {ratio / mac_ratio:.3f} ({expert_s * 1e3:.2f} vs "
                              f"{dense_s * 1e3:.2f} ms)", flush=True)
            except Exception as error:  # one failing setting must not lose the others
                report_error(self.summary, f"experts {label}", error)
                self.save()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        # The dense model's compiled-over-eager speed-up at this setting (median over its rows).
        dense_ms: dict[str, list[float]] = {}
        for r in rows:
            if r["setting"] == setting:
                dense_ms.setdefault(r["mode"], []).append(r["dense_ms"])
        if "eager" in dense_ms:
            eager_ms = statistics.median(dense_ms["eager"])
            for mode, values in dense_ms.items():
                if mode != "eager":
                    speedups = self.summary.setdefault("dense_compile_speedup", {})
                    speedups[f"{setting} {mode}"] = eager_ms / statistics.median(values)


def report_error(summary: dict, where: str, error: Exception) -> None:
    print(f"  {where}: FAILED {type(error).__name__}: {error}", flush=True)
    if not isinstance(error, TimeoutError):  # a budget skip is expected; anything else gets its trace
        traceback.print_exc(limit=3)
    summary.setdefault("errors", []).append({"where": where, "error": repr(error)})


def _prune_2to4_eligible(unet: Any, backend: str, dtype: Any) -> list[str]:
    import torch
    from torch import nn

    from prunekit.ops.masks import magnitude_scores, nm_prune_mask
    from prunekit.ops.semi_structured import min_shape

    min_rows, min_cols = min_shape(backend, dtype)
    pruned = []
    with torch.no_grad():
        for path, layer in unet.named_modules():
            if isinstance(layer, nn.Linear):
                rows, cols = layer.weight.shape
                if rows % min_rows == 0 and cols % min_cols == 0:
                    layer.weight[nm_prune_mask(magnitude_scores(layer.weight), 2, 4)] = 0
                    pruned.append(path)
    return pruned


def _capture_linear_inputs(unet: Any, paths: list[str], args: tuple, kwargs: dict) -> dict[str, Any]:
    import torch

    layers = dict(unet.named_modules())
    captured: dict[str, Any] = {}
    handles = []
    for path in paths:
        def hook(module: Any, inputs: tuple, path: str = path) -> None:
            captured.setdefault(path, inputs[0].detach().clone())

        handles.append(layers[path].register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            unet(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def sparse_section(args: argparse.Namespace, budget: Budget, summary: dict, save: Callable[[], None]) -> None:
    import torch

    from prunekit.ops.semi_structured import (
        SemiStructuredError,
        plan_semi_structured,
        resolve_backend,
        to_semi_structured,
    )
    from prunekit.unet.compile import CUDA_GRAPH_MODES, compile_unet
    from prunekit.unet.latency import DTYPES, interleaved_ratio
    from prunekit.unet.macs import example_inputs

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    plan_dtype = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float16
    backend = resolve_backend(args.sparse_backend)
    latent, batch = (int(x) for x in args.sparse_setting.split("x"))
    result: dict[str, Any] = {"setting": args.sparse_setting, "backend": backend}
    summary["sparse_2to4"] = result
    masked = build_dense(args.device, dtype, args.seed)
    pruned = _prune_2to4_eligible(masked, backend, plan_dtype)
    plan = plan_semi_structured(masked, backend=backend, dtype=plan_dtype)
    result["plan"] = plan.summary()
    print(f"  2:4 masks on {len(pruned)} Linear layers; plan: {plan.summary()}", flush=True)
    sparse = copy.deepcopy(masked)
    try:
        report = to_semi_structured(sparse, backend=backend)
    except SemiStructuredError as error:
        result["skipped"] = str(error)
        print(f"  2:4 conversion skipped: {error}", flush=True)
        save()
        if device.type == "cuda":
            return
        # Dry run: the rest runs on the unconverted copy, so that its code is exercised off the GPU
        # (its speed-ups are 1 by construction and its difference 0).
        print("  dry run: timing the unconverted copy in its place", flush=True)
        report = plan
    result["converted"] = len(report.converted)
    result["skipped_layers"] = report.skipped
    inputs, kwargs = example_inputs(masked, height=latent, width=latent, batch=batch,
                                    generator=torch.Generator().manual_seed(args.seed))
    with torch.inference_mode():
        reference = masked(*inputs, **kwargs).sample.float()
        out = sparse(*inputs, **kwargs).sample.float()
    result["max_abs_diff"] = float((out - reference).abs().max())
    result["max_abs_reference"] = float(reference.abs().max())
    print(f"  2:4 output vs masked dense: max |diff| {result['max_abs_diff']:.3g} "
          f"(max |output| {result['max_abs_reference']:.3g})", flush=True)

    # Per Linear: each distinct (weight shape, input shape) once, on the input it gets in the forward.
    captured = _capture_linear_inputs(masked, report.converted, inputs, kwargs)
    dense_layers, sparse_layers = dict(masked.named_modules()), dict(sparse.named_modules())
    seen: dict[tuple, list[str]] = {}
    for path in report.converted:
        key = (tuple(dense_layers[path].weight.shape), tuple(captured[path].shape))
        seen.setdefault(key, []).append(path)
    layer_rows = result.setdefault("layers", [])
    with torch.inference_mode():
        for (weight_shape, input_shape), paths in seen.items():
            if not budget.fits(args.min_row_s):
                print("  2:4 per-layer timing stopped: out of budget", flush=True)
                break
            x = captured[paths[0]]
            inner = args.layer_inner

            def loop(layer: Any, x: Any = x, inner: int = inner) -> None:
                # Several calls per timed sample: one Linear takes microseconds, about what a
                # synchronise costs, so a single call would time mostly the timer.
                for _ in range(inner):
                    layer(x)

            d, s = dense_layers[paths[0]], sparse_layers[paths[0]]
            dense_s, sparse_s, ratio = interleaved_ratio(lambda d=d: loop(d), lambda s=s: loop(s),
                                                         repeats=args.layer_repeats, warmup=args.warmup, device=device)
            layer_rows.append({"weight": list(weight_shape), "input": list(input_shape), "layers": len(paths),
                               "example": paths[0], "dense_us": dense_s * 1e6 / inner,
                               "sparse_us": sparse_s * 1e6 / inner, "speedup": 1 / ratio})
    save()
    print("\n| weight (out x in) | input | layers | dense us | 2:4 us | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in layer_rows:
        print(f"| {r['weight'][0]}x{r['weight'][1]} | {'x'.join(map(str, r['input']))} | {r['layers']} | "
              f"{r['dense_us']:.1f} | {r['sparse_us']:.1f} | {r['speedup']:.2f} |")

    steps = result.setdefault("step", {})
    modes = ["eager"] + [m for m in args.modes if m != "eager"][:1]
    for mode in modes:
        try:
            cuda_graphs = mode in CUDA_GRAPH_MODES
            with torch.inference_mode():
                if mode != "eager":
                    needed = 2 * FIRST_COMPILE_GUESS_S[device.type]
                    if not budget.fits(needed):
                        raise TimeoutError(f"compiling both U-Nets (~{needed:.0f} s) would not fit in --budget-s")
                    for model in (masked, sparse):
                        compile_unet(model, mode=mode, backend=args.backend)
                        timed_first_call(caller(model, inputs, kwargs, eager=False, cuda_graphs=cuda_graphs), device)
                dense_s, sparse_s, ratio = interleaved_ratio(
                    caller(masked, inputs, kwargs, eager=mode == "eager", cuda_graphs=cuda_graphs),
                    caller(sparse, inputs, kwargs, eager=mode == "eager", cuda_graphs=cuda_graphs),
                    repeats=args.repeats, warmup=args.warmup, device=device)
            steps[mode] = {"dense_ms": dense_s * 1e3, "sparse_ms": sparse_s * 1e3, "speedup": 1 / ratio}
            print(f"  2:4 whole step, {mode}: {sparse_s * 1e3:.2f} vs {dense_s * 1e3:.2f} ms dense, "
                  f"speed-up {1 / ratio:.3f}", flush=True)
        except Exception as error:
            report_error(summary, f"2:4 whole step {mode}", error)
        save()


def print_table(summary: dict) -> None:
    rows = summary.get("experts", [])
    if not rows:
        return
    print("\n| setting | mode | MAC target | MACs ratio | latency ratio | latency / MACs | dense ms | expert ms "
          "| compile s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        compile_s = "" if r["compile_s"] is None else f"{r['compile_s']:.0f}"
        print(f"| {r['setting']} | {r['mode']} | {r['target']:.2f} | {r['macs_ratio']:.3f} | {r['latency_ratio']:.3f} "
              f"| {r['latency_over_macs']:.3f} | {r['dense_ms']:.2f} | {r['expert_ms']:.2f} | {compile_s} |")
    for key, speedup in summary.get("dense_compile_speedup", {}).items():
        print(f"dense U-Net, {key} over eager: {speedup:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself (tiny settings)")
    parser.add_argument("--settings", nargs="+", default=None,
                        help="LATENTxBATCH, in order (default cuda: 64x16 96x16 64x1 96x1; cpu: 8x2 16x1)")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.85, 0.66, 0.5], help="expert MAC targets")
    parser.add_argument("--modes", nargs="+", default=None,
                        help="eager and compile modes, each model the same way (default: eager reduce-overhead; "
                             "cpu: eager default)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32"], help="default: fp16 (cpu: fp32)")
    parser.add_argument("--round-to", type=int, default=8, help="experts' channels rounded up to a multiple")
    parser.add_argument("--repeats", type=int, default=None, help="timed pairs per row (default 20; cpu 3)")
    parser.add_argument("--layer-repeats", type=int, default=50, help="timed pairs per Linear shape (2:4)")
    parser.add_argument("--layer-inner", type=int, default=20, help="calls per timed sample of one Linear (2:4)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--min-row-s", type=float, default=5.0, help="budget a row needs to be started")
    parser.add_argument("--sparse-setting", default=None, help="LATENTxBATCH of the 2:4 part (default: first setting)")
    parser.add_argument("--sparse-backend", default="auto", choices=["auto", "cusparselt", "cutlass"])
    parser.add_argument("--skip", nargs="*", default=[], choices=["experts", "sparse"])
    parser.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget of the whole check")
    parser.add_argument("--out", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("no CUDA device: this check is for a GPU machine (--device cpu: a dry run)", file=sys.stderr)
        return 2
    args.settings = args.settings or (["64x16", "96x16", "64x1", "96x1"] if cuda else ["8x2", "16x1"])
    args.modes = args.modes or (["eager", "reduce-overhead"] if cuda else ["eager", "default"])
    args.dtype = args.dtype or ("fp16" if cuda else "fp32")
    args.repeats = args.repeats or (20 if cuda else 3)
    args.sparse_setting = args.sparse_setting or args.settings[0]
    if not cuda:
        args.layer_repeats, args.layer_inner = min(args.layer_repeats, 5), min(args.layer_inner, 2)
    budget = Budget(args.budget_s)
    out = Path(args.out or os.environ.get("OUT") or tempfile.mkdtemp()) / "gpu-serving"
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(torch.device(args.device)) if cuda else "cpu (dry run)"
    summary: dict[str, Any] = {"device": name, "torch": torch.__version__, "args": vars(args)}

    def save() -> None:
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))

    print(f"{name}, torch {torch.__version__}, {args.dtype}, modes {args.modes}, backend {args.backend}, "
          f"settings {args.settings}, targets {args.targets}, budget {args.budget_s:.0f} s", flush=True)
    # The first target (batch 16, 64x64) first, then the 2:4 part (cheap: one compile at
    # most), then the other settings, so that a tight budget drops the least important rows.
    steps: list[tuple[str, Callable[[], None]]] = []
    check: list[ExpertsCheck] = []

    def experts(setting: str) -> Callable[[], None]:
        def run() -> None:
            if not check:
                check.append(ExpertsCheck(args, budget, summary, save))
            check[0].run(setting)
        return run

    if "experts" not in args.skip:
        steps.append((f"experts {args.settings[0]}", experts(args.settings[0])))
    if "sparse" not in args.skip:
        steps.append((f"2:4 {args.sparse_setting}", lambda: sparse_section(args, budget, summary, save)))
    if "experts" not in args.skip:
        steps += [(f"experts {s}", experts(s)) for s in args.settings[1:]]
    for title, run in steps:
        if not budget.fits(args.min_row_s):
            print(f"\nskipping {title} and later: {budget.used:.0f} s used of --budget-s {budget.seconds:.0f}")
            break
        print(f"\n== {title} ({budget.used:.0f} s used) ==", flush=True)
        try:
            run()
        except Exception as error:
            report_error(summary, title, error)
        save()
    print_table(summary)
    print(f"\ntotal {budget.used:.0f} s; summary.json in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
