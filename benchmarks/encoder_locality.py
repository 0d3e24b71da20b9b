"""Does attention point better over more local tokens? The report recipe with the local encoder at depth 0, 1, 2.

`LocalPatchEncoder` with ``depth`` grid blocks gives each token a (2 * depth + 1)^2 patch receptive field:
depth 0 sees its own 8x8-pixel patch (plus the 3x3 pixel stem's one-pixel border), depth 2, the report
experiment's encoder, sees 5x5 of the 8x8 patches. Each captioner is trained with the report experiment's recipe
and budget (`crossfuse.lab.report_generation`, quick judged row: 2,400 standard films x 8 epochs, batch 16,
auxiliary finding loss 1.0); optionally the ViT beside them. Per model, the heatmap method is chosen on its
validation films and the test films are scored once with it (the experiment's rule, applied per row). Prints
finding F1 and chance-corrected pointing (macro over kinds, at image-dependent tokens) per encoder and seed.
Models train on ``--jobs`` processes (`crossfuse.lab.units`), one torch thread each.

    python benchmarks/encoder_locality.py --depths 0,1,2 --seeds 0,1 --vit
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from crossfuse.data.radiographs import VARIANT_KINDS, tokenize
from crossfuse.lab.pointing import PrefixModel
from crossfuse.lab.report_generation import PLANS, generate, score
from crossfuse.lab.units import run_units
from crossfuse.models.attention_maps import METHODS
from crossfuse.models.captioner_training import TrainedCaptioner, train_captioner


def evaluate(trained: TrainedCaptioner) -> dict:
    """Method chosen on validation films, then test scores with it (F1 and pointing, macro over kinds)."""
    prefix = PrefixModel([tokenize(r) for r in trained.train_reports])
    kinds = VARIANT_KINDS["standard"]
    words, maps = generate(trained, trained.val, list(METHODS))
    validation = {
        m: float(
            np.nan_to_num(score(words, maps[m], trained.val, prefix, kinds)["pointing"]["macro"]["corrected"], nan=-1)
        )
        for m in METHODS
    }
    method = max(METHODS, key=lambda m: validation[m])
    words, maps = generate(trained, trained.test, [method])
    return {"method": method, **score(words, maps[method], trained.test, prefix, kinds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="0,1,2", help="local encoder depths, comma-separated")
    parser.add_argument("--seeds", default="0", help="seeds, comma-separated")
    parser.add_argument("--vit", action="store_true", help="add the ViT encoder (depth 2, global attention)")
    parser.add_argument("--jobs", type=int, default=2, help="processes training models at once")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = PLANS["quick"].shape
    shapes = [
        (f"local, depth {d} ({2 * d + 1}x{2 * d + 1} patches)", replace(base, encoder_layers=d))
        for d in (int(v) for v in args.depths.split(","))
    ]
    if args.vit:
        shapes.append(("vit (global)", replace(base, encoder="vit")))
    seeds = [int(v) for v in args.seeds.split(",")]
    units = [(shape, seed) for seed in seeds for _, shape in shapes]
    started = time.monotonic()
    models = run_units(train_captioner, units, lambda text: print(f"  {text}", flush=True), workers=args.jobs)
    print(f"trained {len(models)} captioners in {time.monotonic() - started:.0f} s wall ({args.jobs} processes)")
    print(f"{'encoder':34s} seed  F1 macro  pointing (corrected)  mass / box share  method   F1 per kind")
    for (seed, (name, _)), trained in zip([(s, sh) for s in seeds for sh in shapes], models, strict=True):
        out = evaluate(trained)
        macro = out["pointing"]["macro"]
        kinds = " ".join(f"{k.split()[-1]} {v:.2f}" for k, v in out["f1"].items())
        print(
            f"{name:34s} {seed:4d}  {out['f1_macro']:8.3f}  {macro['corrected']:20.3f}  "
            f"{macro['mass']:.3f} / {macro['box_share']:.3f}    {out['method']:8s} {kinds}"
        )


if __name__ == "__main__":
    main()
