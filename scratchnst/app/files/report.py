"""Everything a run writes besides the image: manifest, checkpoint, loss plot, progress bar.

Lazy imports: matplotlib (optional, for --plot only) and tqdm (the progress bar), where they are used.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np

from scratchnst import __version__
from scratchnst.app.files.atomic import atomic_open, atomic_write_bytes
from scratchnst.errors import ScratchnstError, one_line


def version() -> str:
    """The package's version, as manifests record it."""
    return __version__


def manifest_path(out: Path) -> Path:
    """out.png -> out.json."""
    return Path(out).with_suffix(".json")


def checkpoint_path(out: Path) -> Path:
    """out.png -> out.ckpt.npz."""
    return Path(out).with_suffix(".ckpt.npz")


def iteration_path(out: Path, iteration: int) -> Path:
    """out.png, 40 -> out_iter0040.png."""
    out = Path(out)
    return out.with_name(f"{out.stem}_iter{iteration:04d}{out.suffix}")


def plot_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}_loss.png")


def _json_safe(value):
    """NaN/inf are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_manifest(out: Path, manifest: dict) -> Path:
    path = manifest_path(out)
    atomic_write_bytes(path, (json.dumps(_json_safe(manifest), indent=2) + "\n").encode())
    return path


def write_checkpoint(out: Path, state: dict) -> Path:
    """Arrays of the optimiser state go into an .npz; everything else into its "meta" JSON entry."""
    path = checkpoint_path(out)
    opt = state["optimizer"]
    arrays = {f"opt.{k}": v for k, v in opt.items() if isinstance(v, np.ndarray)}
    meta = dict(state, optimizer={k: v for k, v in opt.items() if not isinstance(v, np.ndarray)})
    with atomic_open(path) as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    return path


def read_checkpoint(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            state = json.loads(str(z["meta"]))
            state["optimizer"].update({k[4:]: z[k] for k in z.files if k.startswith("opt.")})
    except (OSError, ValueError, KeyError) as exc:
        raise ScratchnstError(f"{path}: not a readable scratchnst checkpoint ({one_line(exc)})") from None
    return state


def read_resumable(manifest_file) -> tuple[dict, dict]:
    """(manifest, checkpoint state) of a run that can be resumed; ScratchnstError otherwise."""
    path = Path(manifest_file)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ScratchnstError(f"{path}: cannot read the run manifest ({one_line(exc)})") from None
    if not isinstance(manifest, dict) or "args" not in manifest or "output" not in manifest:
        raise ScratchnstError(f"{path}: not a scratchnst run manifest")
    status = manifest.get("status")
    if status == "done":
        raise ScratchnstError(f"{path}: that run is already done; nothing to resume")
    if status == "failed":
        raise ScratchnstError(f"{path}: that run failed ({manifest.get('error', 'see the manifest')}); resuming would fail again")
    # "interrupted" (Ctrl-C/SIGTERM) or "running" (the manifest of a checkpoint; the run was killed).
    ckpt = manifest.get("checkpoint") or (manifest["output"] and str(checkpoint_path(manifest["output"])))
    if not ckpt or not Path(ckpt).is_file():
        raise ScratchnstError(f"{path}: no checkpoint to resume from (run with --checkpoint-every N, or interrupt it with Ctrl-C)")
    return manifest, read_checkpoint(Path(ckpt))


def write_plot(out: Path, history: list[dict]) -> Path:
    """OUT_loss.png: the total loss and the unweighted content, style and tv terms per iteration, log
    scale, with a dashed line where a new scale starts."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ScratchnstError("--plot needs matplotlib: pip install 'scratchnst[plot]'") from None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    its = [h["iteration"] for h in history]
    for key in ("loss", "content", "style", "tv"):
        values = [h[key] if h[key] and h[key] > 0 else np.nan for h in history]
        if any(np.isfinite(values)):
            ax.plot(its, values, label="total" if key == "loss" else key)
    for h_prev, h in zip(history, history[1:]):
        if h["scale"] != h_prev["scale"]:
            ax.axvline(h["iteration"] - 0.5, color="grey", lw=0.5, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (unweighted terms)")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    path = plot_path(out)
    atomic_write_bytes(path, buf.getvalue())
    return path


def progress_bar(total: int, *, initial: int = 0, disable: bool = False, unit: str = "it"):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=disable, unit=unit, dynamic_ncols=True, leave=True)


def postfix(entry: dict) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.3g}"
    return f"{entry['size']}px loss={fmt(entry['loss'])} c={fmt(entry['content'])} s={fmt(entry['style'])} tv={fmt(entry['tv'])}"
