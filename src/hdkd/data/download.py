"""Downloading the official MedMNIST `.npz` files into a cache folder, verified by their published MD5 checksums.

`download_medmnist("breastmnist", size=28)` fetches `breastmnist.npz` (28 px) or `breastmnist_{size}.npz` (64,
128, 224 px: MedMNIST+) from the MedMNIST v3 Zenodo record, into `$HDKD_CACHE_DIR/medmnist` (default
`~/.cache/hdkd/medmnist`). The file is streamed into a temporary file next to its destination, its MD5 is
checked, and only then is it renamed into place (hdkd.io.atomic_write): an interrupted or corrupt download never
leaves a file that looks complete. A file already in the cache with the right checksum is not fetched again.

The checksums are the ones the MedMNIST authors publish in their package (medmnist 3.0.2, `medmnist/info.py`,
for record 10519652). Only the 2-D single-label datasets are listed (ChestMNIST is multi-label and the 3-D sets
are volumes; hdkd trains neither); any other name or size needs its checksum given explicitly (`md5=` /
`--md5`). Nothing but the standard library's urllib is used.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from hdkd.data.cache import cache_root
from hdkd.errors import ConfigError, DataError
from hdkd.io import atomic_write

MEDMNIST_URL_BASE = "https://zenodo.org/records/10519652/files"  # MedMNIST v3 (MedMNIST+), Zenodo
MEDMNIST_SIZES = (28, 64, 128, 224)
_CHUNK = 1 << 20

# (name, size) -> MD5 of the official file, as published in medmnist 3.0.2's medmnist/info.py (record 10519652).
MEDMNIST_MD5: dict[tuple[str, int], str] = {
    ("pathmnist", 28): "a8b06965200029087d5bd730944a56c1",
    ("pathmnist", 64): "55aa9c1e0525abe5a6b9d8343a507616",
    ("pathmnist", 128): "ac42d08fb904d92c244187169d1fd1d9",
    ("pathmnist", 224): "2c51a510bcdc9cf8ddb2af93af1eadec",
    ("dermamnist", 28): "0744692d530f8e62ec473284d019b0c7",
    ("dermamnist", 64): "b70a2f5635c6199aeaa28c31d7202e1f",
    ("dermamnist", 128): "2defd784463fa5243564e855ed717de1",
    ("dermamnist", 224): "8974907d8e169bef5f5b96bc506ae45d",
    ("octmnist", 28): "c68d92d5b585d8d81f7112f81e2d0842",
    ("octmnist", 64): "e229e9440236b774d9f0dfef9d07bdaf",
    ("octmnist", 128): "0a97e76651ace45c5d943ee3f65b63ae",
    ("octmnist", 224): "abc493b6d529d5de7569faaef2773ba3",
    ("pneumoniamnist", 28): "28209eda62fecd6e6a2d98b1501bb15f",
    ("pneumoniamnist", 64): "8f4eceb4ccffa70c672198ea285246c6",
    ("pneumoniamnist", 128): "05b46931834c231683c68f40c47b2971",
    ("pneumoniamnist", 224): "d6a3c71de1b945ea11211b03746c1fe1",
    ("retinamnist", 28): "bd4c0672f1bba3e3a89f0e4e876791e4",
    ("retinamnist", 64): "afda852cc34dcda56f86ad2b2457dbcc",
    ("retinamnist", 128): "e48e916a24454daf90583d4e6efb1a18",
    ("retinamnist", 224): "eae7e3b6f3fcbda4ae613ebdcbe35348",
    ("breastmnist", 28): "750601b1f35ba3300ea97c75c52ff8f6",
    ("breastmnist", 64): "742edef2a1fd1524b2efff4bd7ba9364",
    ("breastmnist", 128): "363e4b3f8d712e9b5de15470a2aaadf1",
    ("breastmnist", 224): "b56378a6eefa9fed602bb16d192d4c8b",
    ("bloodmnist", 28): "7053d0359d879ad8a5505303e11de1dc",
    ("bloodmnist", 64): "2b94928a2ae4916078ca51e05b6b800b",
    ("bloodmnist", 128): "adace1e0ed228fccda1f39692059dd4c",
    ("bloodmnist", 224): "b718ff6835fcbdb22ba9eacccd7b2601",
    ("tissuemnist", 28): "ebe78ee8b05294063de985d821c1c34b",
    ("tissuemnist", 64): "123ece2eba09d0aa5d698fda57103344",
    ("tissuemnist", 128): "61b955355d7425a89687b06cca3ce0c2",
    ("tissuemnist", 224): "b077128c4a949f0a4eb01517f9037b9c",
    ("organamnist", 28): "68e3f8846a6bd62f0c9bf841c0d9eacc",
    ("organamnist", 64): "2dcccc29b88e6da5a01161ef20cda288",
    ("organamnist", 128): "eeae80d0a227a8d099027e1b3cfd3b60",
    ("organamnist", 224): "50747347e05c87dd3aaf92c49f9f3170",
    ("organcmnist", 28): "b9ceb9546e10131b32923c5bbeaea2b1",
    ("organcmnist", 64): "3ce34a8724ea6f548e6db4744d03b6a9",
    ("organcmnist", 128): "773c1f009daa3fe5d9a2a201b2a7ed94",
    ("organcmnist", 224): "050f5e875dc056f6768abf94ec9995d1",
    ("organsmnist", 28): "9ab87b696fb54e2a387ebe992d6ed5f1",
    ("organsmnist", 64): "53a6d115339d874c25e309a994ff46d3",
    ("organsmnist", 128): "ded0c5fa01a95dc4978b956f613e9b8e",
    ("organsmnist", 224): "b354719e553fbbb2513d5533f52a4cb1",
}
MEDMNIST_NAMES = tuple(dict.fromkeys(name for name, _ in MEDMNIST_MD5))
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")


def medmnist_filename(name: str, size: int = 28) -> str:
    """`{name}.npz` at 28 px (the original MedMNIST files), `{name}_{size}.npz` otherwise."""
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def medmnist_cache_dir(cache: Optional[str | os.PathLike] = None) -> Path:
    """`cache` if given, else $HDKD_CACHE_DIR/medmnist, else ~/.cache/hdkd/medmnist."""
    return Path(cache).expanduser() if cache else cache_root() / "medmnist"


def file_md5(path: str | os.PathLike) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def expected_md5(name: str, size: int, md5: Optional[str] = None) -> str:
    """The checksum to verify against: `md5` when given, else the published one; ConfigError when neither exists."""
    if md5 is not None:
        md5 = md5.strip().lower()
        if not _MD5.match(md5):
            raise ConfigError(f"--md5 {md5}: expected 32 hexadecimal digits")
        return md5
    if (name, size) in MEDMNIST_MD5:
        return MEDMNIST_MD5[(name, size)]
    if name not in MEDMNIST_NAMES:
        raise ConfigError(
            f"medmnist {name}: not a dataset hdkd knows a checksum for (known: "
            f"{', '.join(MEDMNIST_NAMES)}); pass --md5 CHECKSUM to download it anyway"
        )
    raise ConfigError(
        f"medmnist {name} at {size} px: no published checksum known to hdkd; pass --md5 CHECKSUM to download it anyway"
    )


def download_medmnist(
    name: str,
    size: int = 28,
    cache: Optional[str | os.PathLike] = None,
    url_base: Optional[str] = None,
    md5: Optional[str] = None,
    timeout: float = 60.0,
    log: Optional[Callable[[str], None]] = None,
) -> Path:
    """Fetch a MedMNIST `.npz` into the cache folder (see the module docstring) and return its path.

    Raises ConfigError for an unknown name/size without `md5`, DataError when the server cannot be reached or
    answers with an error, or when the downloaded file's MD5 differs from the expected one (the file is deleted).
    """
    name = name.strip().lower()
    if not _NAME.match(name):
        raise ConfigError(f"medmnist {name!r}: not a dataset name (expected e.g. breastmnist)")
    if size not in MEDMNIST_SIZES:
        raise ConfigError(f"--size {size}: MedMNIST files come in {', '.join(map(str, MEDMNIST_SIZES))} px")
    expected = expected_md5(name, size, md5)
    filename = medmnist_filename(name, size)
    target = medmnist_cache_dir(cache) / filename
    say = log or (lambda message: None)

    if target.is_file():
        actual = file_md5(target)
        if actual == expected:
            say(f"{target} is already downloaded (md5 {actual})")
            return target
        say(f"{target} has md5 {actual}, not {expected}: downloading it again")

    url = f"{(url_base or MEDMNIST_URL_BASE).rstrip('/')}/{filename}?download=1"
    hint = "download the file by hand and pass it with --data"
    request = urllib.request.Request(url, headers={"User-Agent": "hdkd (python urllib)"})
    say(f"downloading {url} -> {target}")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise DataError(f"{url}: the server answered HTTP {exc.code} {exc.reason}; {hint}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"cannot reach {url} ({reason}); {hint}") from None

    def write(handle) -> None:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                handle.write(chunk)
        except (OSError, urllib.error.URLError) as exc:  # includes timeouts mid-transfer
            raise DataError(f"{url}: the download was interrupted ({exc}); {hint}") from None
        actual = digest.hexdigest()
        if actual != expected:  # raising here makes atomic_write delete the temporary file
            raise DataError(
                f"{filename}: MD5 checksum mismatch: expected {expected}, got {actual} "
                f"(downloaded from {url}); the download was deleted"
            )

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with response:
            atomic_write(target, write)
    except PermissionError as exc:
        raise DataError(
            f"{target.parent}: cannot write the download ({exc.strerror or exc}); choose another folder with --cache"
        ) from None
    say(f"{target}: md5 {expected} verified")
    return target


__all__ = [
    "download_medmnist",
    "medmnist_filename",
    "medmnist_cache_dir",
    "expected_md5",
    "file_md5",
    "MEDMNIST_MD5",
    "MEDMNIST_NAMES",
    "MEDMNIST_SIZES",
    "MEDMNIST_URL_BASE",
]
