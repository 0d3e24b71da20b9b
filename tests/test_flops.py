"""Analytic FLOP counts against torch.utils.flop_counter on the real models.

Tolerance: none. Both sides count only matrix products (2 m k n per product), so the analytic count
must equal FlopCounterMode's exactly; any difference means the formula and the model disagree.
"""

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from crossfuse.attention import CrossAttention
from crossfuse.flops import STRATEGIES, attention_flops, fusion_flops, linear_flops, measured_flops
from crossfuse.fusion import FusionConfig, ModalitySpec, build_fusion
from crossfuse.lab import needle

CONFIGS = [
    FusionConfig(dim=16, num_heads=2, num_layers=2, encoder_layers=1, mlp_ratio=2.0),
    FusionConfig(dim=8, num_heads=2, num_layers=1, encoder_layers=0, mlp_ratio=1.5, direction="b->a"),
]


def _count(fn) -> int:
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_linear_and_attention_formulas_match_the_counter() -> None:
    layer = nn.Linear(7, 5)
    assert linear_flops(12, 7, 5) == _count(lambda: layer(torch.randn(12, 7)))
    attn = CrossAttention(query_dim=12, context_dim=6, num_heads=3, head_dim=5, out_dim=9)
    q, c = torch.randn(1, 4, 12), torch.randn(1, 10, 6)
    assert attention_flops(4, 10, 12, 6, 15, 9) == _count(lambda: attn(q, c))


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("config", CONFIGS, ids=["deep", "shallow-b->a"])
def test_fusion_flops_equal_flop_counter(strategy: str, config: FusionConfig) -> None:
    modalities = {"text": ModalitySpec(7, 3), "image": ModalitySpec(5, 11)}
    model = build_fusion(strategy, modalities, 3, config)
    batch = 2
    inputs = {"text": torch.randn(batch, 3, 7), "image": torch.randn(batch, 11, 5)}
    masks = {"text": torch.tensor([[True, True, False], [True, True, True]])}
    assert fusion_flops(strategy, modalities, 3, config) * batch == measured_flops(model, inputs, masks)


@pytest.mark.parametrize("strategy", needle.STRATEGIES)
def test_needle_models_flops_per_example(strategy: str) -> None:
    """The FLOPs the needle experiment reports, on the exact models it trains (quick widths)."""
    budget = needle.PLANS["quick"]
    for n in (16, 64):
        model = needle.build_model(strategy, n, budget)
        inputs = {"query": torch.randn(1, 1, needle.DATA.key_dim), "source": torch.randn(1, n, needle.DATA.item_dim)}
        assert needle.flops_per_example(strategy, n, budget) == measured_flops(model, inputs)


def test_both_costs_grow_linearly_in_n() -> None:
    budget = needle.PLANS["quick"]
    for strategy in needle.STRATEGIES:
        f = [needle.flops_per_example(strategy, n, budget) for n in (16, 32, 48)]
        assert f[2] - f[1] == f[1] - f[0] > 0  # one fusion layer, one query token: linear in n


def test_bad_arguments() -> None:
    modalities = {"a": ModalitySpec(4, None), "b": ModalitySpec(4, 2)}
    with pytest.raises(ValueError, match="strategy"):
        fusion_flops("mystery", modalities, 2, FusionConfig())
    with pytest.raises(ValueError, match="lengths"):
        fusion_flops("cross", modalities, 2, FusionConfig())
    assert fusion_flops("cross", modalities, 2, FusionConfig(), lengths={"a": 3}) > 0
