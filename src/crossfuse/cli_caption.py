"""``crossfuse caption-train`` and ``crossfuse caption``: the chest-film report captioner.

crossfuse caption-train --out runs/captioner [--size quick]
crossfuse caption --run runs/captioner --image film.png [--beam 4] [--heatmaps DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from crossfuse.lab.result import SIZES
from crossfuse.models.attention_maps import DEFAULT_METHOD, METHODS
from crossfuse.models.captioner import ENCODERS
from crossfuse.models.captioner_training import CaptionerShape
from crossfuse.precision import DEVICE_KINDS, PRECISIONS


def cmd_caption_train(args: argparse.Namespace) -> int:
    """Train the report captioner on generated chest films and save it as a run for `crossfuse caption`."""
    import math
    from dataclasses import replace

    from crossfuse.checkpoint import save_captioner
    from crossfuse.data.radiographs import save_png
    from crossfuse.models.captioner import check_registers
    from crossfuse.models.captioner_training import CAPTIONER_SIZES, train_captioner
    from crossfuse.run_dir import prepare_run_dir

    if args.samples < 0:
        raise ValueError(f"samples: expected >= 0, got {args.samples}")
    if not (math.isfinite(args.finding_loss) and args.finding_loss >= 0):
        raise ValueError(f"finding_loss: expected a finite weight >= 0 (0 = off), got {args.finding_loss}")
    check_registers(args.registers, args.encoder)  # before the run directory is made
    out = Path(args.out)
    prepare_run_dir(out, force=args.force, kind="captioner")
    shape = replace(
        CAPTIONER_SIZES[args.size], encoder=args.encoder, registers=args.registers, finding_loss=args.finding_loss
    )
    trained = train_captioner(shape, args.seed, progress=lambda text: print(text, flush=True))
    save_captioner(out, trained.model, trained.vocab)
    samples = out / "samples"
    samples.mkdir(exist_ok=True)
    for i, study in enumerate(trained.test[: args.samples]):
        save_png(study.image, samples / f"study_{i:02d}.png")
        (samples / f"study_{i:02d}.txt").write_text(study.report + "\n")
    final = trained.fit.final
    print(
        f"validation: loss {final.get('val_loss', float('nan')):.3f}, "
        f"next-token accuracy {final.get('val_token_accuracy', float('nan')):.3f}"
    )
    print(f"captioner saved to {out} (config.json, model.safetensors); {args.samples} held-out films in {samples}")
    if args.samples:
        print(f"try: crossfuse caption --run {out} --image {samples / 'study_00.png'} --heatmaps {out / 'heatmaps'}")
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    """Write the report of one chest-film PNG; optionally one cross-attention heatmap per word."""
    import math

    import torch

    from crossfuse.checkpoint import load_captioner
    from crossfuse.data.radiographs import detokenize, load_png
    from crossfuse.models.attention_maps import word_heatmaps
    from crossfuse.models.decoding import beam_search, greedy_decode
    from crossfuse.precision import autocast, check_precision, resolve_device
    from crossfuse.viz.heatmaps import write_word_heatmaps

    if args.beam < 1:
        raise ValueError(f"beam: expected an integer >= 1, got {args.beam}")
    if not math.isfinite(args.length_penalty):
        raise ValueError(f"length_penalty: expected a finite number, got {args.length_penalty}")
    check_precision(args.precision)
    device = resolve_device(args.device)
    model, vocab = load_captioner(Path(args.run), device=str(device))
    image = load_png(Path(args.image), model.config.image_size)
    images = torch.from_numpy(image)[None, None].to(device)
    with autocast(device, args.precision):
        if args.beam == 1:
            out = greedy_decode(model, images)
        else:
            out = beam_search(model, images, args.beam, length_penalty=args.length_penalty)
    words = vocab.words(out.tokens[0])
    print(detokenize(words))
    if args.heatmaps:
        heat = word_heatmaps(model, images, out.tokens, [args.method])[args.method][0]
        paths = write_word_heatmaps(image, words, heat.float().cpu(), Path(args.heatmaps), grid=model.grid)
        print(f"{len(paths)} word heatmaps ({args.method} attention maps) written to {args.heatmaps}")
    return 0


def register(sub: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    """Add ``caption`` and ``caption-train`` to the ``crossfuse`` command."""
    caption = sub.add_parser(
        "caption", help="write the report of a chest-film PNG with a trained captioner", formatter_class=formatter
    )
    caption.add_argument("--run", required=True, help="run directory written by `crossfuse caption-train`")
    caption.add_argument("--image", required=True, help="grayscale PNG of the model's image size (64x64)")
    caption.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    caption.add_argument("--length-penalty", type=float, default=1.0, help="beam score = log p / length**alpha")
    caption.add_argument("--heatmaps", default=None, help="directory for one attention heatmap PNG per word")
    caption.add_argument(
        "--method", choices=METHODS, default=DEFAULT_METHOD, help="heatmap method (default: best on validation films)"
    )
    caption.add_argument("--device", default="cpu", help=f"{', '.join(DEVICE_KINDS)} or cuda:N")
    caption.add_argument("--precision", choices=PRECISIONS, default="fp32", help="autocast dtype while decoding")
    caption.set_defaults(func=cmd_caption)

    train = sub.add_parser(
        "caption-train", help="train the report captioner on generated chest films", formatter_class=formatter
    )
    train.add_argument("--out", required=True, help="run directory to create")
    train.add_argument("--size", choices=SIZES, default="quick", help="data/training budget")
    train.add_argument("--encoder", choices=ENCODERS, default="local", help="local patch encoder or ViT")
    train.add_argument(
        "--registers", type=int, default=0, help="ViT register tokens the decoder never attends to (--encoder vit)"
    )
    train.add_argument(
        "--finding-loss",
        type=float,
        default=CaptionerShape.finding_loss,
        help="weight of the auxiliary multi-label finding loss on the encoder (0 = captions only)",
    )
    train.add_argument("--seed", type=int, default=0, help="data and training seed")
    train.add_argument("--samples", type=int, default=4, help="held-out films (PNG + reference) to save")
    train.add_argument(
        "--force", action="store_true", help="start over: empty --out if it is a crossfuse captioner run"
    )
    train.set_defaults(func=cmd_caption_train)
