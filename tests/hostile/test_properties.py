"""Property-based hostile input at every boundary (hypothesis): images, CSVs, npz files, configs, checkpoint metadata.

Each property: the boundary answers with success or an `hdkd.errors` error, never another exception; nothing is
written outside the test's own folders (an audit hook watches every file opened for writing, created, renamed or
removed); nothing goes to the network (tests/hostile/conftest.py). Example counts are small: the suite runs in CI.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.extra import numpy as hnp
from PIL import Image
from safetensors.torch import save_file

from hdkd.config import ROLES, DataConfig, build_config, from_dict, validate
from hdkd.data import build_datasets
from hdkd.data.imageio import load_image
from hdkd.data.sources import MEDMNIST_KEYS, discover_source
from hdkd.errors import HDKDError
from hdkd.models.checkpoint import FORMAT, HDKD_ARCHITECTURES, create_model_from_checkpoint, read_checkpoint_metadata

SETTINGS = settings(
    max_examples=int(os.environ.get("HDKD_HYPOTHESIS_EXAMPLES", "25")),
    deadline=None,
    derandomize=True,  # the same examples on every run: a CI failure reproduces
    database=None,  # nothing written into the repository (.hypothesis/)
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ALLOWED_ROOTS = (os.path.realpath(tempfile.gettempdir()), "/dev/")


# ------------------------------------------------------------------------------ no writes outside the test folders
class _WriteWatch:
    """Records file-system writes (open for writing, mkdir, rename, remove) outside ALLOWED_ROOTS while active."""

    active = False
    outside: list[str] = []

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if not cls.active:
            return
        paths = []
        if event == "open" and len(args) >= 2 and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
            if writing:
                paths.append(args[0])
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.truncate"):
            paths.append(args[0])
        elif event == "os.rename":
            paths += [args[0], args[1]]
        for path in paths:
            if isinstance(path, int):
                continue
            real = os.path.realpath(os.fsdecode(path))
            if not real.startswith(ALLOWED_ROOTS):
                cls.outside.append(f"{event} {real}")


sys.addaudithook(_WriteWatch.hook)


def _event(text: str) -> None:
    """A statistic for `pytest --hypothesis-show-statistics` (how many examples each boundary accepted)."""
    if currently_in_test_context():
        event(text)


@contextlib.contextmanager
def boundary():
    """Run one example: only hdkd.errors errors may escape; no write outside the allowed folders."""
    _WriteWatch.outside = []
    _WriteWatch.active = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
        _event("accepted")
    except HDKDError as exc:
        _event(f"refused: {type(exc).__name__}")
        assert "\n" not in str(exc), f"a multi-line error: {exc!r}"
    finally:
        _WriteWatch.active = False
    assert not _WriteWatch.outside, _WriteWatch.outside


def _example_folder(tmp_path: Path) -> Path:
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    return folder


# --------------------------------------------------------------------------------------------------------- images
def _png(size=(6, 5), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 100).save(buffer, format="PNG")
    return buffer.getvalue()


_VALID = {"png": _png(), "gif": None, "jpg": None}
_image_bytes = st.one_of(
    st.binary(max_size=300),
    st.builds(  # a real PNG with a few bytes changed or cut short
        lambda data, flips, cut: _mutate(data, flips, cut),
        st.just(_png()),
        st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
        st.integers(10, 200),
    ),
)


def _mutate(data: bytes, flips, cut) -> bytes:
    array = bytearray(data[:cut])
    for position, value in flips:
        if position < len(array):
            array[position] = value
    return bytes(array)


@SETTINGS
@given(content=_image_bytes, suffix=st.sampled_from([".png", ".jpg", ".gif", ".tif", ".webp", ".bmp"]))
def test_random_bytes_as_an_image(tmp_path, content, suffix):
    path = _example_folder(tmp_path) / f"x{suffix}"
    path.write_bytes(content)
    with boundary():
        for channels in (1, 3):
            array = load_image(path, channels)
            assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[-1] == channels


# ------------------------------------------------------------------------------------------------------------ CSVs
_IMAGES = [f"{c}{i}" for c in "ab" for i in range(5)]
_ids = st.one_of(
    st.sampled_from(_IMAGES),
    st.sampled_from(["../b0", "/etc/passwd", "imgs/a0.png", "a0.png", "imgs/../../x.png", "", "nan", "A0"]),
    st.text(max_size=12),
)
_labels = st.one_of(st.sampled_from(["a", "b"]), st.sampled_from(["a ", "A", "", "nan", "c"]), st.text(max_size=6))
_columns = st.sampled_from(["image_id", "dx", "lesion_id", "split", "other", ""])
_splits = st.one_of(st.sampled_from(["train", "test"]), st.sampled_from(["val", "Validation", "", "bogus"]))
_headers = st.one_of(
    st.sampled_from([["image_id", "dx"], ["image_id", "dx", "split"], ["image_id", "dx", "lesion_id"]]),
    st.lists(_columns, max_size=5),
)


@st.composite
def _csv_files(draw):
    """Mostly a valid table (every image once, labels a/b) with a few rows changed; sometimes anything."""
    header = draw(_headers)
    rows = []
    for index, name in enumerate(_IMAGES):
        values = {"image_id": name, "dx": name[0], "split": "test" if index % 5 == 4 else "train"}
        values["lesion_id"] = f"l{index // 2}"
        if draw(st.integers(0, 9)) == 0:  # one hostile change
            key = draw(st.sampled_from(["image_id", "dx", "split", "lesion_id"]))
            values[key] = draw({"image_id": _ids, "dx": _labels, "split": _splits, "lesion_id": _ids}[key])
        rows.append([values.get(column, draw(st.text(max_size=4))) for column in header])
    rows += [[draw(_ids) for _ in header] for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2])))]  # extra rows
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"]))
    return header, rows, encoding, draw(st.sampled_from([None, None, "lesion_id"]))


@SETTINGS
@given(csv_file=_csv_files())
def test_random_csvs(tmp_path, csv_file):
    header, rows, encoding, group = csv_file
    root = _example_folder(tmp_path)
    (root / "imgs").mkdir()
    for value, name in enumerate(_IMAGES):
        Image.new("L", (4, 4), 20 * value).save(root / "imgs" / f"{name}.png")
    text = "\n".join(",".join(f'"{v}"' if "," in v or '"' in v else v for v in row) for row in [header, *rows])
    try:
        (root / "labels.csv").write_bytes(text.encode(encoding))
    except UnicodeEncodeError:
        (root / "labels.csv").write_bytes(text.encode("utf-8", "surrogatepass"))
    with boundary():
        source = discover_source(DataConfig(path=str(root), group_column=group))
        for split in source.splits().values():
            for path in split.paths if split is not None else []:
                assert os.path.realpath(path).startswith(os.path.realpath(root)), path  # never outside the data


# ----------------------------------------------------------------------------------------------------- npz files
_dtypes = st.sampled_from([np.uint8, np.int64, np.int8, np.float32, np.bool_, np.uint16])
_arrays = _dtypes.flatmap(
    lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6))
)
_keys = st.one_of(st.sampled_from(MEDMNIST_KEYS), st.text("abcxyz_", min_size=1, max_size=8))


def _valid_array(key: str, n: int = 6) -> np.ndarray:
    if "images" in key:
        return np.arange(n * 16, dtype=np.uint8).reshape(n, 4, 4)
    return np.arange(n) % 2


@SETTINGS
@given(
    arrays=st.dictionaries(_keys, _arrays, max_size=8),
    changed=st.lists(st.sampled_from(MEDMNIST_KEYS), max_size=2, unique=True),
    complete=st.booleans(),
)
def test_random_npz_files(tmp_path, arrays, changed, complete):
    folder = _example_folder(tmp_path)
    if complete:  # a valid file with the drawn arrays in place of one or two of its keys
        arrays = {
            key: arrays.get(key, _valid_array(key)) if key in changed else _valid_array(key) for key in MEDMNIST_KEYS
        }
    path = folder / "data.npz"
    np.savez(path, **arrays)
    with boundary():
        data = DataConfig(path=str(path), cache_dir=str(folder / "cache"), num_workers=0, val_fraction=0.0)
        built = build_datasets(data, img_size=8)
        assert built.num_classes >= 2


def test_bytes_that_are_not_an_npz(tmp_path):
    path = tmp_path / "data.npz"
    for content in (b"", b"PK\x03\x04garbage", os.urandom(64)):
        path.write_bytes(content)
        with boundary():
            discover_source(DataConfig(path=str(path)))


# --------------------------------------------------------------------------------------------------------- configs
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["auto", "cpu", "cosine", "adamw", "soft", "test", "1e-3", "ten", "hf-hub:x/y", "nll"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_SCHEMA = {
    section: list(getattr(build_config("teacher"), section).__dataclass_fields__)
    for section in ("model", "data", "optim", "distill", "train")
}


@st.composite
def _config_dicts(draw):
    out = {}
    for section, keys in _SCHEMA.items():
        if draw(st.booleans()):
            chosen = draw(st.lists(st.sampled_from(keys + ["bogus"]), max_size=4, unique=True))
            out[section] = {key: draw(_values) for key in chosen}
        elif draw(st.integers(0, 9)) == 0:
            out[section] = draw(_scalars)  # a section given as a scalar
    if draw(st.booleans()):
        out["roles"] = draw(st.one_of(_scalars, st.dictionaries(st.sampled_from([*ROLES, "x"]), _values, max_size=2)))
    if draw(st.booleans()):
        out["output"] = draw(_values)
    return out


@SETTINGS
@given(values=_config_dicts())
def test_configs_with_random_types(tmp_path, values):
    with boundary():
        cfg = from_dict(values)
        validate(cfg, roles=ROLES)
        for role in ROLES:  # a config that validates resolves for every role
            cfg.for_role(role)


@SETTINGS
@given(
    text=st.one_of(
        st.binary(max_size=200),
        st.builds(lambda v: yaml.safe_dump(v).encode(), _config_dicts()),
        st.sampled_from(
            [b"!!python/object/apply:os.system [ls]", b"train: [unclosed", b"\xff\xfe\x00a", b"a: &x [*x]"]
        ),
    )
)
def test_config_files_of_random_bytes(tmp_path, text):
    path = _example_folder(tmp_path) / "c.yaml"
    path.write_bytes(text)
    with boundary():
        validate(build_config(None, [str(path)]), roles=ROLES)


# -------------------------------------------------------------------------------------------- checkpoint metadata
_names = st.sampled_from(
    [*HDKD_ARCHITECTURES, "resnet18", "hf-hub:timm/resnet18", "timm/resnet18", "vit_huge_patch14_224", "", "x"]
)
_arg_keys = st.sampled_from(
    ["num_classes", "in_chans", "img_size", "widths", "depths", "block", "stem_stride", "dflt_depth", "dflt_heads",
     "dflt_patch_size", "drop_rate", "checkpoint_path", "pretrained", "pretrained_cfg_overlay", "features_only"]
)  # fmt: skip
_arg_values = st.one_of(
    st.sampled_from([-1, 0, 1, 2, 3, 4, 8, 16, 32, 10**9, 2.5, True, None, "mbcsa", "x", "/etc/passwd"]),
    st.lists(st.sampled_from([-1, 0, 1, 2, 4, 8, 10**7, "a"]), max_size=4),
)
_args_json = st.one_of(
    st.builds(json.dumps, st.dictionaries(_arg_keys, _arg_values, max_size=6)),
    st.text(max_size=20),
    st.sampled_from(["[]", "null", "1", '{"num_classes": "2"}']),
)
_EXTRA_KEYS = ("class_names", "img_size", "in_chans", "temperature", "metrics")
_extra_json = st.one_of(
    st.builds(json.dumps, st.dictionaries(st.sampled_from(list(_EXTRA_KEYS)), _values, max_size=3)),
    st.text(max_size=10),
)  # fmt: skip


_TINY = {"num_classes": 2, "img_size": 32, "widths": [8, 8, 8], "depths": [1, 1, 1], "dflt_depth": 1, "dflt_heads": 2}
_TINY_STATE = {}


def _tiny_state(name: str) -> dict:
    """The weights of a tiny real model (so that metadata that is fine loads), made once per architecture."""
    if name not in _TINY_STATE:
        from hdkd.models.factory import create_model

        model = create_model(name, **_TINY)
        _TINY_STATE[name] = {k: v.contiguous() for k, v in model.state_dict().items()}
    return _TINY_STATE[name]


_perturbed_args = st.builds(
    lambda changes: json.dumps({**_TINY, **changes}), st.dictionaries(_arg_keys, _arg_values, max_size=1)
)


@SETTINGS
@given(
    name=_names,
    args=st.one_of(_perturbed_args, _args_json),
    extra=_extra_json,
    fmt=st.sampled_from([FORMAT, FORMAT, "other", None]),
)
def test_checkpoint_metadata_with_random_fields(tmp_path, name, args, extra, fmt):
    path = _example_folder(tmp_path) / "m.safetensors"
    metadata = {"model_name": name, "model_args": args, "extra": extra}
    if fmt is not None:
        metadata["format"] = fmt
    state = _tiny_state(name) if name in HDKD_ARCHITECTURES else {"head.weight": torch.zeros(2, 4)}
    save_file(state, str(path), metadata=metadata)
    with boundary():
        read_checkpoint_metadata(path)
        create_model_from_checkpoint(path)


def test_the_property_checks_can_fail():
    """The watchers themselves: a write outside the allowed folders and a foreign exception are both caught."""
    outside = "/hdkd-should-not-exist"  # at the file-system root: outside the allowed folders wherever the clone is
    assert not outside.startswith(ALLOWED_ROOTS)
    with pytest.raises(AssertionError, match=f"open {outside}"):
        with boundary():
            sys.audit("open", outside, "w", os.O_WRONLY | os.O_CREAT)  # the event open() raises, without the write
    with pytest.raises(KeyError):
        with boundary():
            raise KeyError("not an hdkd error")
