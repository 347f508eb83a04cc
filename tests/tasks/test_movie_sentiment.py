"""movie-sentiment fetcher, offline: a tarball built here in the sdist's nested layout."""

import io
import subprocess
import tarfile

import pytest

from pipeline.core.tasks import get_task
from pipeline.core.tasks import movie_sentiment as ms

LINES = [
    "1\t2.26666666667\tA fine, warm film.",
    "2\t-0.6\tEffective but too tepid biopic",
    "3\t0.0\tNeither here nor there.",  # rating 0: dropped
    "4\t1.5\tGood fun.",
    "5\t-3.2\tA mess.",
]


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def fake_sdist(folder, lines=LINES, inner_path=ms.INNER_ARCHIVE):
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        _add(tar, "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt", "\r\n".join(lines).encode("utf-8"))
        _add(tar, "hutto_ICWSM_2014/tweets_GroundTruth.txt", b"1\t1.0\tnot this one")
    path = folder / "vaderSentiment-3.3.2.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "vaderSentiment-3.3.2/setup.py", b"")
        _add(tar, f"vaderSentiment-3.3.2/{inner_path}", inner.getvalue())
    return path


def local_download(tmp_path, calls, **kwargs):
    def download(dest):
        calls.append(dest)
        return fake_sdist(tmp_path, **kwargs)

    return download


def test_fetch_builds_cached_jsonl_once(tmp_path, cache_dir, capsys):
    calls = []
    path = ms.fetch_movie_reviews(download=local_download(tmp_path, calls))
    assert path == cache_dir / "movie_sentiment.jsonl" and len(calls) == 1
    err = capsys.readouterr().err
    assert "fetching vaderSentiment==3.3.2" in err and "wrote 4 labelled sentences" in err
    import json

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["id"], r["label"], r["text"]) for r in rows] == [
        ("1", 1, "A fine, warm film."), ("2", 0, "Effective but too tepid biopic"), ("4", 1, "Good fun."), ("5", 0, "A mess.")]
    assert ms.fetch_movie_reviews(download=local_download(tmp_path, calls)) == path and len(calls) == 1  # cached
    ms.fetch_movie_reviews(download=local_download(tmp_path, calls), force=True)
    assert len(calls) == 2
    assert list(cache_dir.iterdir()) == [path]  # the sdist and temp folder are gone


def test_task_reads_the_cache_with_datasets(tmp_path, cache_dir):
    lines = [f"{i}\t{(-1) ** i * (1 + i % 3)}\tsentence {i}" for i in range(40)]
    ms.fetch_movie_reviews(download=lambda dest: fake_sdist(tmp_path, lines=lines))
    task = get_task("movie-sentiment")
    splits = task.get_splits()
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [32, 4, 4]
    targets = {r["source"]: r["target"] for split in splits.values() for r in split}
    assert len(targets) == 40 and task.label_strings == ("negative", "positive")
    assert (targets["sentence: sentence 3"], targets["sentence: sentence 4"]) == ("negative", "positive")  # -1·(1+0), +(1+1)
    assert task.get_splits()["test"]["source"] == splits["test"]["source"]  # fixed seeded split


def test_bad_archives(tmp_path, cache_dir):
    with pytest.raises(RuntimeError, match="has no additional_resources/hutto_ICWSM_2014.tar.gz"):
        ms.fetch_movie_reviews(download=lambda dest: fake_sdist(tmp_path, inner_path="other.tar.gz"))
    with pytest.raises(ValueError, match="line 2: expected 3 tab-separated fields, got 2"):
        ms.fetch_movie_reviews(download=lambda dest: fake_sdist(tmp_path, lines=["1\t1.0\tok", "2\tbroken"]))
    assert not (cache_dir / "movie_sentiment.jsonl").exists()  # nothing half-written


def test_pip_download_command_and_failure(tmp_path, monkeypatch):
    seen = []

    def fake_run(cmd, capture_output, text):
        seen.append(cmd)
        (tmp_path / "vaderSentiment-3.3.2.tar.gz").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(ms.subprocess, "run", fake_run)
    assert ms.pip_download_sdist(tmp_path) == tmp_path / "vaderSentiment-3.3.2.tar.gz"
    assert seen[0][1:] == ["-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "vaderSentiment==3.3.2", "-d", str(tmp_path)]
    monkeypatch.setattr(ms.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "No matching distribution"))
    with pytest.raises(RuntimeError, match="(?s)could not download vaderSentiment==3.3.2.*ADEPT_CACHE_DIR.*No matching distribution"):
        ms.pip_download_sdist(tmp_path / "empty")


def test_cache_dir_override(monkeypatch, tmp_path):
    monkeypatch.setenv("ADEPT_CACHE_DIR", str(tmp_path))
    assert ms.cache_dir() == tmp_path
    monkeypatch.delenv("ADEPT_CACHE_DIR")
    assert ms.cache_dir().name == "adept"
