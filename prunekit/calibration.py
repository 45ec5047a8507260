"""Calibration: record what Linear and Conv2d layers see while real inputs flow through a model.

Forward pre-hooks turn each call's input into rows of the layer's input matrix — tokens for a
Linear, unfolded patches (``in·kh·kw`` columns, ``weight.reshape(out, -1)`` order) for a Conv2d
— and fold them into running statistics at once, so memory stays at one statistic per layer
however many prompts, timesteps and tokens pass:

* :class:`InputNorms` — per-column Σx², giving Wanda's ‖X_j‖₂;
* :class:`InputHessian` — the running ``H = 2 X Xᵀ / n`` SparseGPT needs.

The feeders run calibration prompts the way generation does: through the tokenizer and text
encoder (or the pipeline's own ``encode_prompt``, which runs every text encoder of SDXL, SD3,
PixArt and Flux with its tokenizer, length and mask), or through the whole pipeline (classifier-free
guidance, every denoising step; for a transformer the pipeline's own loop: flow matching, Flux's
packed latent tokens and embedded guidance), with a seeded generator so two runs record the same
statistics.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, TypeGuard

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Unfolding a conv input multiplies its size by kh·kw; feed it in slices of this many rows.
_ROWS_PER_SLICE = 1 << 16


class InputStatistic(Protocol):
    """A running statistic of a layer's input rows."""

    rows: int

    def update(self, rows: Tensor) -> None: ...

    def result(self) -> Tensor: ...


class InputNorms:
    """Running Σ_n x_nj² per input column; :meth:`result` is ‖X_j‖₂."""

    def __init__(self, columns: int, device: torch.device | str = "cpu") -> None:
        self.sum_sq = torch.zeros(columns, dtype=torch.float64, device=device)
        self.rows = 0

    def update(self, rows: Tensor) -> None:
        rows = rows.to(self.sum_sq.device, torch.float32)
        self.sum_sq += rows.square().sum(dim=0, dtype=torch.float64)
        self.rows += rows.shape[0]

    def result(self) -> Tensor:
        return self.sum_sq.sqrt().float()


class InputHessian:
    """Running ``H = 2 X Xᵀ / n`` (float32), updated as a mean so it never overflows."""

    def __init__(self, columns: int, device: torch.device | str = "cpu") -> None:
        self.hessian = torch.zeros(columns, columns, dtype=torch.float32, device=device)
        self.rows = 0

    def update(self, rows: Tensor) -> None:
        rows = rows.to(self.hessian.device, torch.float32)
        n = rows.shape[0]
        total = self.rows + n
        # H ← H·rows/total + 2/total · XᵀX, one fused in-place addmm
        self.hessian.addmm_(rows.T, rows, beta=self.rows / total, alpha=2.0 / total)
        self.rows = total

    def result(self) -> Tensor:
        return self.hessian


STATISTICS: dict[str, type] = {"norms": InputNorms, "hessian": InputHessian}


def layer_columns(module: nn.Linear | nn.Conv2d) -> int:
    """Columns of the layer's weight viewed as a matrix (its input features, unfolded for convs)."""
    return module.weight[0].numel()


def input_rows(module: nn.Module, x: Tensor) -> Iterator[Tensor]:
    """The rows of ``module``'s input matrix for one call with input ``x``, in slices."""
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
            padding: Any = 0
        else:
            padding = module.padding
        if padding == "valid":
            padding = 0
        elif padding == "same":
            # stride 1 by torch's rule; pad as Conv2d does (the extra pixel goes right/bottom)
            total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
            x = F.pad(x, (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2))
            padding = 0
        per_image = max(1, _ROWS_PER_SLICE // max(1, x.shape[-1] * x.shape[-2]))
        for start in range(0, x.shape[0], per_image):
            patches = F.unfold(
                x[start : start + per_image],
                module.kernel_size,
                dilation=module.dilation,
                padding=padding,
                stride=module.stride,
            )
            yield patches.transpose(1, 2).reshape(-1, patches.shape[1])
    else:
        flat = x.reshape(-1, x.shape[-1])
        for start in range(0, flat.shape[0], _ROWS_PER_SLICE):
            yield flat[start : start + _ROWS_PER_SLICE]


def can_capture(module: nn.Module) -> TypeGuard[nn.Linear | nn.Conv2d]:
    """Linear layers and dense (groups == 1) 2-D convs; their weight is one matrix."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1


class StopForward(Exception):
    """Raised by a hook to end a forward early, once everything needed has been recorded."""


@contextmanager
def capture_inputs(
    modules: Mapping[str, nn.Module],
    statistic: str | Callable[[nn.Module], InputStatistic],
    *,
    device: torch.device | str | None = None,
    stop_after: nn.Module | None = None,
) -> Iterator[dict[str, InputStatistic]]:
    """Accumulate ``statistic`` (``"norms"``, ``"hessian"`` or a factory) of every module's input
    while the body runs forward passes; hooks are removed on exit. ``device`` holds the
    statistics (default: each layer's own). With ``stop_after``, that module's forward ends the
    pass by raising :class:`StopForward` (callers catch it) — nothing after it is needed.
    """
    stats: dict[str, InputStatistic] = {}
    handles = []
    for name, module in modules.items():
        if not can_capture(module):
            raise TypeError(f"{name}: cannot capture inputs of {type(module).__name__}")
        where = device if device is not None else module.weight.device
        if callable(statistic):
            stats[name] = statistic(module)
        else:
            stats[name] = STATISTICS[statistic](layer_columns(module), where)

        def hook(mod: nn.Module, args: tuple[Any, ...], _stat: InputStatistic = stats[name]) -> None:
            with torch.no_grad():
                for rows in input_rows(mod, args[0].detach()):
                    _stat.update(rows)

        handles.append(module.register_forward_pre_hook(hook))
    if stop_after is not None:

        def stop(mod: nn.Module, args: Any, output: Any) -> None:
            raise StopForward

        handles.append(stop_after.register_forward_hook(stop))
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def execution_order(modules: Mapping[str, nn.Module]) -> Iterator[list[str]]:
    """Record the order in which ``modules`` first run; raises :class:`StopForward` once all have."""
    order: list[str] = []
    handles = []
    for name, module in modules.items():

        def hook(mod: nn.Module, args: Any, _name: str = name) -> None:
            if _name not in order:
                order.append(_name)
                if len(order) == len(modules):
                    raise StopForward

        handles.append(module.register_forward_pre_hook(hook))
    try:
        yield order
    finally:
        for handle in handles:
            handle.remove()


def run_until_stopped(feed: Callable[[], None]) -> bool:
    """Run ``feed``; True when a hook ended it early with :class:`StopForward`."""
    try:
        feed()
    except StopForward:
        return True
    return False


# --- feeders: calibration prompts the way generation uses them ---------------------------------


class Feed(Protocol):
    """Runs calibration data through a model: ``feed()`` is one full pass; ``feed.probe()`` one
    short forward (enough to see which layers run in which order). ``stoppable`` says whether a
    hook may end each forward early with :class:`StopForward` without losing later inputs."""

    stoppable: bool

    def __call__(self) -> None: ...

    def probe(self) -> None: ...


def _batches(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


class _PromptBatchFeed(abc.ABC):
    """A feed that encodes its prompts ``batch_size`` at a time (``_encode(batch)``); a probe encodes one."""

    prompts: list[str]
    batch_size: int

    @abc.abstractmethod
    def _encode(self, batch: list[str]) -> None: ...

    def __call__(self) -> None:
        with torch.no_grad():
            for batch in _batches(self.prompts, self.batch_size):
                self._encode(batch)

    def probe(self) -> None:
        with torch.no_grad():
            self._encode(self.prompts[:1])


class TextEncoderFeed(_PromptBatchFeed):
    """Encodes prompts as the pipeline does: padded to the tokenizer's max length, no attention
    mask unless the encoder asks for one, plus the empty prompt that classifier-free guidance
    encodes for every generation (``with_empty``). Each forward is independent, so stoppable."""

    stoppable = True

    def __init__(self, pipe: Any, prompts: Sequence[str], *, batch_size: int = 8, with_empty: bool = True) -> None:
        self.pipe = pipe
        self.prompts = [*prompts, ""] if with_empty else list(prompts)
        self.batch_size = batch_size

    def _encode(self, batch: list[str]) -> None:
        encoder = self.pipe.text_encoder
        tokenizer = self.pipe.tokenizer
        device = next(encoder.parameters()).device
        tokens = tokenizer(
            batch, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        use_mask = bool(getattr(encoder.config, "use_attention_mask", False))
        mask = tokens.attention_mask.to(device) if use_mask else None
        try:
            encoder(tokens.input_ids.to(device), attention_mask=mask)
        except StopForward:
            pass


class PromptEncodingFeed(_PromptBatchFeed):
    """Encodes prompts with the pipeline's own ``encode_prompt`` (SDXL, SD3, PixArt, Flux): every text
    encoder runs on the tokens, length and mask generation gives it, and with ``guidance_scale > 1``
    the pipeline also encodes its unconditional prompt as generation does (SD3 / PixArt: the empty
    prompt; SDXL: nothing when it uses zeros for it; Flux: never, its guidance is embedded). Hooks on
    one encoder's layers record that encoder; the others just run. Each call is independent, so
    stoppable (a stop inside one encoder ends that ``encode_prompt`` call)."""

    stoppable = True

    def __init__(self, pipe: Any, prompts: Sequence[str], *, batch_size: int = 8, guidance_scale: float = 7.5) -> None:
        self.pipe = pipe
        self.prompts = list(prompts)
        self.batch_size = batch_size
        self.guidance_scale = guidance_scale

    def _encode(self, batch: list[str]) -> None:
        from prunekit.conditioning import call_kwargs, family_of_pipeline

        pipe, family = self.pipe, family_of_pipeline(self.pipe)
        cfg = self.guidance_scale > 1
        device = pipe._execution_device
        try:
            if family == "sdxl":
                pipe.encode_prompt(batch, device=device, do_classifier_free_guidance=cfg)
            elif family == "sd3":
                pipe.encode_prompt(batch, None, None, device=device, do_classifier_free_guidance=cfg,
                                   **call_kwargs(pipe))
            elif family == "pixart":
                pipe.encode_prompt(batch, do_classifier_free_guidance=cfg, device=device, **call_kwargs(pipe))
            elif family == "flux":
                pipe.encode_prompt(batch, None, device=device, **call_kwargs(pipe))
            else:
                pipe.encode_prompt(batch, device, 1, cfg)
        except StopForward:
            pass


class PipelineFeed:
    """Generates latents for the prompts (``steps`` denoising steps, guidance as in generation), so
    the denoiser sees the conditional and unconditional batch of every step. The call is the
    pipeline's own, with the keywords generation adds for its family (PixArt: captions as encoded,
    no binning off its bins; a transformer's recorded ``max_sequence_length``), so a transformer
    is calibrated on exactly the inputs of its denoising loop: flow-matching timesteps, Flux's
    2x2-packed latent tokens with their ids and its embedded guidance (``guidance_scale``). A CPU
    generator seeded with ``seed`` makes the initial noise the same on any device and in every pass.
    A denoising step feeds the next, so a pass cannot be cut short: not stoppable."""

    stoppable = False

    def __init__(
        self,
        pipe: Any,
        prompts: Sequence[str],
        *,
        steps: int,
        guidance_scale: float,
        seed: int,
        batch_size: int = 4,
        height: int | None = None,
        width: int | None = None,
    ) -> None:
        self.pipe = pipe
        self.prompts = list(prompts)
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.seed = seed
        self.batch_size = batch_size
        self.height = height
        self.width = width

    def _generate(self, prompts: Sequence[str], steps: int) -> None:
        from prunekit.conditioning import call_kwargs, conditioning_for, denoiser_of

        generator = torch.Generator("cpu").manual_seed(self.seed)
        self.pipe.set_progress_bar_config(disable=True)
        family = {**conditioning_for(self.pipe).call_defaults(denoiser_of(self.pipe)), **call_kwargs(self.pipe)}
        with torch.no_grad():
            for batch in _batches(prompts, self.batch_size):
                self.pipe(
                    batch,
                    num_inference_steps=steps,
                    guidance_scale=self.guidance_scale,
                    generator=generator,
                    height=self.height,
                    width=self.width,
                    output_type="latent",
                    **family,
                )

    def __call__(self) -> None:
        self._generate(self.prompts, self.steps)

    def probe(self) -> None:
        # every layer runs in the first U-Net call, where the hook stops it; keeping the configured
        # step count spares schedulers that dislike a single step
        run_until_stopped(lambda: self._generate(self.prompts[:1], self.steps))
