"""Loss vs objective evaluations for our L-BFGS and Adam against SciPy's L-BFGS-B (history 100).

A developer tool, not part of the package: SciPy is needed here only.
Same objective (default layers and weights), same start (seeded noise), embedded default images.

    python tools/compare_optimizers.py --size 256 --evaluations 200 [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from scratchnst.app.files import images as im
from scratchnst.core.preprocess import preprocess
from scratchnst import load_vgg16
from scratchnst.core.objective import NSTObjective
from scratchnst.core.optim import make_optimizer
from scratchnst.app.picture.settings import NOISE_STD

CHECKPOINTS = (10, 25, 50, 100, 150, 200, 300, 400)


def best_so_far(losses: list[float]) -> list[float]:
    return list(np.minimum.accumulate(losses))


def run_ours(name: str, x0, objective, budget: int, **options) -> list[float]:
    losses = []

    def fun(x):
        loss, grad = objective.loss_and_grad(x)
        losses.append(loss)
        return loss, grad

    opt = make_optimizer(name, x0.copy(), fun, **options)
    while len(losses) < budget and not opt.converged:
        opt.step()
    return best_so_far(losses[:budget])


def run_scipy(x0, objective, budget: int, history: int) -> list[float]:
    from scipy.optimize import fmin_l_bfgs_b

    losses = []

    def fun(flat):
        loss, grad = objective.loss_and_grad(flat.reshape(x0.shape).astype(x0.dtype))
        losses.append(loss)
        return loss, grad.reshape(-1).astype(np.float64)

    fmin_l_bfgs_b(fun, x0.reshape(-1).astype(np.float64), m=history, maxfun=budget, maxiter=budget, factr=0, pgtol=0)
    return best_so_far(losses[:budget])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--evaluations", type=int, default=200)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    net = load_vgg16(backend="numpy")
    content_img, style_img = im.default_images()
    content = preprocess(im.resize_long_side(content_img, args.size))
    style = preprocess(im.resize_long_side(style_img, args.size))
    objective = NSTObjective(net, content, [style])
    x0 = np.random.default_rng(0).normal(0.0, NOISE_STD, content.shape).astype(np.float32)
    runs = {
        "ours L-BFGS, history 20 (default)": run_ours("lbfgs", x0, objective, args.evaluations, history=20),
        "ours L-BFGS, history 100": run_ours("lbfgs", x0, objective, args.evaluations, history=100),
        "SciPy L-BFGS-B, history 100": run_scipy(x0, objective, args.evaluations, 100),
        "ours Adam, lr 8": run_ours("adam", x0, objective, args.evaluations, learning_rate=8.0),
    }
    marks = [k for k in CHECKPOINTS if k <= args.evaluations]
    print(f"best loss after k evaluations, {args.size} px, default objective, seeded noise start")
    print("| optimiser | " + " | ".join(f"k={k}" for k in marks) + " |")
    print("|---|" + "---:|" * len(marks))
    for name, losses in runs.items():
        cells = [f"{losses[k - 1]:.4g}" if k <= len(losses) else "-" for k in marks]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": args.size, "runs": runs}, f)


if __name__ == "__main__":
    main()
