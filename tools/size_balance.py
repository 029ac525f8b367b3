"""Does the look depend on --size? Stylize one pair at two sizes and compare the balance.

Each output is scored at its own size: its style distance (Σ_l w_l E_style,l, the style term, free of
the size) and its content distance per activation (½ mean (F − P)² at the content layers). The
balance is (style distance large / small) ÷ (content distance large / small): 1 means both sizes
landed at the same trade-off between content and style; far above 1, the content won at the large
size. The architecture issue asks for a balance within a factor 3 of 1 with the default weights.

    python tools/size_balance.py --sizes 128,384                     # the defaults (normalize=size)
    python tools/size_balance.py --sizes 128,384 --normalize none    # the seed article's raw formula
    python tools/size_balance.py CONTENT STYLE --sizes 256,768 --out-dir /tmp/sb   # keep the pictures
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import scratchnst  # noqa: E402
from scratchnst.app.files import images as im  # noqa: E402
from scratchnst.app.picture.settings import Settings  # noqa: E402
from scratchnst.core.objective import NSTObjective  # noqa: E402


def distances(net, settings: Settings, content, style, picture) -> dict:
    """The picture's style distance and content distance per activation at the picture's size."""
    size = max(picture.size)
    c = scratchnst.preprocess(im.fit_long_side(content, size))
    s = scratchnst.preprocess(im.fit_long_side(style, int(round(size * settings.style_scale))))
    obj = NSTObjective(
        net, c, [s], content_layers=settings.content_layers, style_layers=settings.style_layers,
        content_weight=1.0, style_weight=1.0, tv_weight=0.0, normalize="size",
    )
    terms = obj.evaluate(scratchnst.preprocess(im.resize_to(picture, c.shape[3], c.shape[2]))).terms
    return {"style": terms["style"], "content_per_activation": terms["content"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("content", nargs="?", help="content image (default: the embedded photo)")
    p.add_argument("style", nargs="?", help="style image (default: the embedded painting)")
    p.add_argument("--sizes", default="128,384", help="small,large")
    p.add_argument("--normalize", default=None, help="size|none (default: stylize's)")
    p.add_argument("--style-weight", type=float, default=None)
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--out-dir", default=None, help="keep the pictures here")
    args = p.parse_args()
    small, large = (int(v) for v in args.sizes.split(","))
    options = {k: v for k, v in (("normalize", args.normalize), ("style_weight", args.style_weight), ("iterations", args.iterations)) if v is not None}
    content, _ = im.open_image(args.content, "content")
    style, _ = im.open_image(args.style, "style")
    out_dir = Path(args.out_dir or tempfile.mkdtemp())
    out_dir.mkdir(parents=True, exist_ok=True)
    net = scratchnst.load_vgg16(backend="numpy")
    rows = {}
    for size in (small, large):
        t = time.perf_counter()
        result = scratchnst.stylize(args.content, [args.style] if args.style else None, out=out_dir / f"size{size}.png",
                                    size=size, quiet=True, net=net, **options)
        settings = Settings(size=size, **options).validated(1)
        rows[size] = {**distances(net, settings, content, style, result.image), "seconds": round(time.perf_counter() - t, 1)}
    balance = (rows[large]["style"] / rows[small]["style"]) / (rows[large]["content_per_activation"] / rows[small]["content_per_activation"])
    print(json.dumps({"options": options, "sizes": rows, "balance": balance, "pictures": str(out_dir)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
