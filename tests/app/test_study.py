"""`python -m scratchnst inspect`: the pictures, the per-term gradients behind them, and the static
page, loaded in a real headless Chromium."""

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from scratchnst import gradcheck
from scratchnst.app.cli import main
from scratchnst.app.study import diverging, feature_grid, gradient_picture, sequential, term_gradients
from scratchnst.core.losses import content_loss, style_loss, tv_loss
from scratchnst.core.objective import NSTObjective

# -- colour maps and pictures -----------------------------------------------------------------------


def test_diverging_is_white_at_zero_and_symmetric():
    v = np.array([[-2.0, -1.0, 0.0, 1.0, 2.0, 50.0]])
    rgb = diverging(v, scale=2.0).astype(int)
    assert rgb[0, 2].tolist() == [255, 255, 255]
    assert rgb[0, 4, 0] > rgb[0, 4, 2] and rgb[0, 0, 2] > rgb[0, 0, 0]  # red for +, blue for −
    assert (rgb[0, 5] == rgb[0, 4]).all()  # clipped beyond the scale
    # |v| = 1 is halfway from white to full colour, on either side.
    assert np.allclose(rgb[0, 3], (255 + rgb[0, 4]) / 2, atol=1) and np.allclose(rgb[0, 1], (255 + rgb[0, 0]) / 2, atol=1)
    # The default scale is a high percentile of |v|: one outlier does not wash out the rest.
    many = np.concatenate([np.linspace(-1, 1, 999), [1e6]])[None]
    assert np.abs(diverging(many).astype(int) - 255).sum(axis=-1).mean() > 100


def test_sequential_runs_dark_to_bright():
    rgb = sequential(np.array([[0.0, 0.5, 1.0, 3.0]]), scale=1.0).astype(int)
    brightness = rgb.sum(axis=-1)[0]
    assert brightness[0] < brightness[1] < brightness[2] == brightness[3]


def test_feature_grid_puts_the_strongest_channel_first(rng):
    f = rng.uniform(0, 1, (1, 20, 8, 8))
    f[0, 7] += 5
    grid = feature_grid(f, count=16)
    assert grid.shape == (4 * 64 + 3 * 2, 4 * 64 + 3 * 2, 3)
    top_left = grid[:64, :64, 0].astype(float)
    assert np.allclose(top_left[::8, ::8], np.rint(255 * f[0, 7] / f[0, 7].max()))


def test_gradient_picture_shows_the_push_downhill():
    g = np.zeros((1, 3, 2, 2))
    g[0, :, 0, 0] = 1.0  # the loss grows if this pixel brightens: the push is darker (blue)
    g[0, :, 1, 1] = -1.0
    rgb = gradient_picture(g).astype(int)
    assert rgb[0, 0, 2] > rgb[0, 0, 0] and rgb[1, 1, 0] > rgb[1, 1, 2]
    assert rgb[0, 1].tolist() == [255, 255, 255]


# -- the per-term gradients -------------------------------------------------------------------------


@pytest.fixture
def small_objective(rng):
    net = gradcheck.random_vgg(rng)
    content, style = rng.uniform(-100, 100, (1, 3, 16, 16)), rng.uniform(-100, 100, (1, 3, 24, 20))
    obj = NSTObjective(net, content, [style], content_weight=2.0, style_weight=30.0, tv_weight=0.1, style_layer_weights=[1, 2, 3, 4, 5])
    return obj, rng.uniform(-100, 100, (1, 3, 16, 16))


def test_term_gradients_add_up_to_the_objective(small_objective):
    obj, x = small_objective
    parts = term_gradients(obj, x.copy())
    assert list(parts) == ["content"] + [f"style {l}" for l in obj.style_layers] + ["tv"]
    _, grad = obj.loss_and_grad(x.copy())
    assert gradcheck.rel_error(sum(parts.values()), grad) < 1e-12


@pytest.mark.parametrize("term", ["content", "style relu3_1", "tv"])
def test_each_term_gradient_is_that_terms_derivative(small_objective, term, rng):
    obj, x = small_objective

    def value(v):
        feats = obj.net.extract(v, obj.layers)
        if term == "content":
            return obj.content_weight * content_loss(feats["relu4_1"], obj.targets["relu4_1"])[0]
        if term == "tv":
            return obj.tv_weight * tv_loss(v)[0]
        w = obj.style_layer_weights[obj.style_layers.index("relu3_1")]
        return obj.style_weight * w * style_loss(feats["relu3_1"], obj.grams["relu3_1"])[0]

    coords = sorted(rng.choice(x.size, 12, replace=False).tolist())
    numeric = gradcheck.numeric_gradient(value, x.copy(), eps=1e-4, coords=coords)
    analytic = term_gradients(obj, x.copy())[term].reshape(-1)[coords]
    assert gradcheck.rel_error(analytic, numeric) < 1e-7


# -- the command and its page -----------------------------------------------------------------------


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


@pytest.fixture(scope="module")
def page(tmp_path_factory, vgg_weights_path):
    """One small inspect run on the real network (two L-BFGS iterations), shared by the tests below."""
    out = tmp_path_factory.mktemp("inspect")
    for name, colour in (("content.png", (200, 60, 30)), ("style.png", (20, 90, 200))):
        a = np.random.default_rng(len(name)).integers(0, 256, (40, 48, 3)).astype(np.uint8) // 2 + np.array(colour, np.uint8) // 2
        Image.fromarray(a).save(out / name)
    argv = ["inspect", str(out / "content.png"), str(out / "style.png"), "-o", str(out / "site"), "--size", "32",
            "--layers", "relu1_1,relu3_1", "--iterations", "2", "--seed", "3", "--backend", "numpy", "--weights", str(vgg_weights_path)]
    assert main(argv) == 0
    return out / "site"


@pytest.mark.weights
def test_inspect_writes_every_picture_the_page_shows(page):
    html = (page / "index.html").read_text(encoding="utf-8")
    parser = _Images()
    parser.feed(html)
    srcs = parser.srcs
    for src in srcs:
        assert (page / src).is_file(), src
        Image.open(page / src).verify()
    expected = {
        "features/relu1_1.png", "features/relu3_1.png", "gram/relu5_1_style.png", "gram/relu5_1_image.png",
        "grads/content.png", "grads/style_relu2_1.png", "grads/tv.png", "evolution/image_strip.png",
        "evolution/image.gif", "evolution/style_relu4_1_strip.png",
    }
    assert expected <= set(srcs)
    assert Image.open(page / "evolution/image.gif").n_frames == 3  # iterations 0, 1, 2
    assert Image.open(page / "grads/content.png").size == Image.open(page / "content.png").size[:2]
    assert Image.open(page / "content.png").size[0] == 32  # 48×40, long side scaled to --size
    leftovers = [p.name for p in page.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert not leftovers  # atomic writes leave no temp files


@pytest.mark.parametrize(
    "argv, message",
    [
        (["inspect", "nope.png", "nope2.png"], "nope.png: no such file"),
        (["inspect", "--layers", "relu9_9"], "error: --layers: unknown layer 'relu9_9'"),
        (["inspect", "--size", "4"], "--size must be a whole number ≥ 16 (got 4)"),
        (["inspect", "--iterations", "-1"], "--iterations must be a whole number ≥ 0 (got -1)"),
        (["inspect", "--seed", "-1"], "--seed must be a whole number ≥ 0 (got -1)"),
        (["inspect", "only_content.png"], "give a STYLE image after CONTENT"),
    ],
)
def test_inspect_user_errors_are_one_line_exit_2(capsys, tmp_path, argv, message):
    assert main(argv + ["-o", str(tmp_path / "site")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


# -- a real browser ---------------------------------------------------------------------------------


def _chromium() -> str:
    """The Chromium binary, installed from Debian's packages when missing (root + apt only), or skip."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("no chromium, and cannot install it (needs root and apt-get)")
    try:
        # A fresh machine has no package lists yet: update once, then install.
        subprocess.run(["apt-get", "update"], capture_output=True, timeout=300, check=True)
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], capture_output=True, timeout=600, check=True)
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"no chromium, and `apt-get install chromium` failed: {type(e).__name__}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed chromium but it is not on PATH")
    return found


@pytest.mark.weights
def test_the_page_loads_in_headless_chromium(page, tmp_path):
    browser = _chromium()
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
        "--virtual-time-budget=10000", "--dump-dom", (page / "index.html").as_uri(),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", run.stdout)
    assert body, run.stdout[:500]
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))
    assert attrs.get("data-images-ok") == "true", f"images that did not load: {attrs.get('data-broken')}"
    assert int(attrs["data-images"]) >= 30
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
