"""Parameters and multiply-accumulates, measured on the built module.

MACs are counted by forward hooks on every convolution and linear layer during one
forward pass of a single image, the convention of the papers' "FLOPs" and of
torchvision's published GFLOPS (BN, ReLU, pooling and additions are not counted). There is
no second, hand-written formula: the module itself is the one source.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        per_output = (module.in_channels // module.groups) * kh * kw
        return output[0].numel() * per_output
    if isinstance(module, nn.Linear):
        return output[0].numel() * module.in_features
    return 0


@torch.no_grad()
def measure(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, Any]:
    """Params and MACs of ``model`` (per top-level child, too) for one ``input_size`` image."""
    owner: dict[nn.Module, str] = {}
    for child_name, child in model.named_children():
        for m in child.modules():
            owner.setdefault(m, child_name)
    macs: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(module: nn.Module, _inp: Any, output: torch.Tensor) -> None:
        name = owner.get(module, "")
        macs[name] = macs.get(name, 0) + _layer_macs(module, output)

    def shape_hook(name: str):
        def record(_m: nn.Module, _inp: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                shapes[name] = tuple(output.shape[1:])

        return record

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    handles += [c.register_forward_hook(shape_hook(n)) for n, c in model.named_children()]
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        model(torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    children = []
    for name, child in model.named_children():
        p, m = count_params(child), macs.get(name, 0)
        if p or m:
            children.append(dict(name=name, params=p, macs=m, output_shape=shapes.get(name)))
    return dict(
        params=count_params(model),
        macs=sum(macs.values()),
        input_size=tuple(input_size),
        layers=children,
    )
