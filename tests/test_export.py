"""torch.export of every fusion strategy (dynamic batch), and docstrings help() shows instead of PyTorch's."""

from __future__ import annotations

import pydoc

import pytest
import torch

from crossfuse.fusion import FUSIONS, FusionConfig, FusionOutput, ModalitySpec, build_fusion

pytestmark = pytest.mark.usefixtures("one_thread")
SPECS = {"text": ModalitySpec(4, 6), "image": ModalitySpec(3, 5)}


def inputs(batch: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = {name: torch.randn(batch, spec.length, spec.dim, generator=g) for name, spec in SPECS.items()}
    masks = {name: torch.rand(batch, spec.length, generator=g) > 0.3 for name, spec in SPECS.items()}
    masks["image"][0] = False  # one sample without the image
    return x, masks


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_every_strategy_exports_with_a_dynamic_batch(name: str) -> None:
    torch.manual_seed(0)
    model = build_fusion(name, SPECS, 3, FusionConfig(dim=16, num_heads=2, num_layers=1)).eval()
    x, masks = inputs(4)
    batch = torch.export.Dim("batch", min=2, max=64)
    dynamic = ({n: {0: batch} for n in SPECS}, {n: {0: batch} for n in SPECS})
    exported = torch.export.export(model, (x, masks), dynamic_shapes=dynamic)
    for size in (4, 7):
        x, masks = inputs(size, seed=size)
        got, want = exported.module()(x, masks), model(x, masks)
        assert isinstance(got, FusionOutput)
        torch.testing.assert_close(got.logits, want.logits)
        torch.testing.assert_close(got.pooled, want.pooled)
        assert torch.isfinite(got.logits).all()


def test_every_public_module_forward_has_a_docstring_with_shapes() -> None:
    import importlib
    import inspect
    import pkgutil

    import crossfuse

    missing = []
    for info in pkgutil.walk_packages(crossfuse.__path__, "crossfuse."):
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or name.startswith("_") or not issubclass(cls, torch.nn.Module):
                continue
            doc = cls.forward.__doc__ or ""
            if cls.forward is torch.nn.Module.forward or ("Shapes" not in doc and "->" not in doc):
                missing.append(f"{info.name}.{name}")
    assert not missing, f"forward without a docstring giving shapes: {missing}"


def test_public_forward_docstrings_are_ours() -> None:
    from crossfuse.attention import CrossAttention
    from crossfuse.fusion import FusionModel
    from crossfuse.models.adapters import HuggingFaceEncoder, ImageTokens

    generic = torch.nn.Module.forward.__doc__ or ""
    for cls in (CrossAttention, FusionModel, ImageTokens, HuggingFaceEncoder):
        doc = cls.forward.__doc__ or ""
        assert "Shapes" in doc and doc != generic, cls.__name__
    text = pydoc.render_doc(CrossAttention.forward, renderer=pydoc.plaintext)
    assert "Attend from" in text and "Define the computation performed at every call" not in text


def test_a_model_with_an_image_encoder_exports() -> None:
    from crossfuse.models.adapters import ImageTokens

    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, stride=2, padding=1), torch.nn.ReLU())
    specs = {"image": ModalitySpec(8, 16), "text": ModalitySpec(4, 6)}
    encoders = {"image": ImageTokens(backbone, 8, 4, 4)}
    model = build_fusion("cross", specs, 2, FusionConfig(dim=16, num_heads=2), encoders=encoders).eval()
    args = ({"image": torch.randn(3, 1, 8, 8), "text": torch.randn(3, 6, 4)}, {"text": torch.tensor([1, 0, 1])})
    exported = torch.export.export(model, args)
    torch.testing.assert_close(exported.module()(*args).logits, model(*args).logits)
