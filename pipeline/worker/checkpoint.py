"""Checkpoints that resume without unpickling anything: safetensors + JSON, a manifest written last.

One checkpoint folder (what `ray.train.report` persists, rank 0 writes it):

    adapter/            the adapter now (adept_config.json + adept_model.safetensors)
    best_adapter/       the best adapter so far (absent before the first validation)
    trainer.safetensors full fp32 adapter tensors and AdamW moments, gathered from every rank:
                        "param/<name>", "exp_avg/<name>", "exp_avg_sq/<name>", "rng/<rank>/torch" ...
    trainer_state.json  step, data position, best score, history, per-group step/lr, scheduler state,
                        engine counters, python RNG states
    manifest.json       sha256 and size of every file above; written last

`verify()` checks the manifest before a byte is loaded: a file missing, changed, or not listed (a
planted `.pt`, say) refuses the checkpoint with the file named. `latest_good()` then falls back to
the newest earlier checkpoint of the same run that verifies. Tensors are gathered to full size on save
and re-sharded by the engine on load, so a run may resume on another number of workers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pipeline.core.errors import UserError

log = logging.getLogger("adept")

MANIFEST = "manifest.json"
TENSORS = "trainer.safetensors"
STATE = "trainer_state.json"
FORMAT = "adept-ray-checkpoint/1"
# Files Ray itself may add to a reported checkpoint folder: never loaded by us, so not a risk.
RAY_OWNED = frozenset({".metadata.json", ".validate_checkpoint"})


class CheckpointError(UserError):
    """A checkpoint that must not be loaded: the message names the folder and the offending file."""


@dataclass
class TrainerSnapshot:
    """What an engine hands over to be saved, and takes back on resume (full, unsharded tensors)."""

    tensors: dict[str, torch.Tensor]  # param/<name>, exp_avg/<name>, exp_avg_sq/<name>
    meta: dict[str, Any]  # per-group step and lr, scheduler state, engine counters (JSON)


# ------------------------------------------------------------------------------------------ RNG state
def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's RNG state: torch (CPU and CUDA) as tensors, python's as JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = state
    version, internal, gauss = random.getstate()
    return tensors, {"python": [version, list(internal), gauss]}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = sorted(k for k in tensors if k.startswith("cuda"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


# ------------------------------------------------------------------------------------------ write
def write(folder: Path, snapshot: TrainerSnapshot, state: dict[str, Any],
          rng: list[tuple[dict[str, torch.Tensor], dict[str, Any]]]) -> None:
    """Write the trainer files and, last, the manifest (rank 0; adapter folders are written before).

    `rng` holds every rank's `rng_state()`, in rank order.
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in snapshot.tensors.items()}
    for rank, (rng_tensors, _) in enumerate(rng):
        tensors.update({f"rng/{rank}/{k}": v.cpu().contiguous() for k, v in rng_tensors.items()})
    save_file(tensors, str(folder / TENSORS), metadata={"format": FORMAT})
    full_state = {**state, "engine": snapshot.meta, "rng": [meta for _, meta in rng]}
    (folder / STATE).write_text(json.dumps(full_state, indent=1) + "\n")
    write_manifest(folder, full_state.get("step"))


def write_manifest(folder: Path, step: int | None) -> None:
    files = {str(p.relative_to(folder)): {"sha256": _sha256(p), "bytes": p.stat().st_size}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"format": FORMAT, "step": step, "files": files}, indent=1) + "\n")
    os.replace(tmp, folder / MANIFEST)


# ------------------------------------------------------------------------------------------ read
def verify(folder: Path) -> dict[str, Any]:
    """The manifest, after checking every file against it; CheckpointError names what is wrong."""
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        raise CheckpointError(f"checkpoint {str(folder)!r} has no {MANIFEST}: it is partial (the writer died) or "
                              "was not written by this version; it will not be loaded.")
    try:
        manifest = json.loads(manifest_file.read_text())
        listed = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {str(folder)!r}: {MANIFEST} is unreadable ({err}).") from err
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(folder)!r}: format {manifest.get('format')!r}, expected {FORMAT!r}.")
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {MANIFEST}
    unexpected = sorted(f for f in present - set(listed) if Path(f).name not in RAY_OWNED)
    if unexpected:
        raise CheckpointError(f"checkpoint {str(folder)!r} holds file(s) its manifest does not list: "
                              f"{[str(folder / f) for f in unexpected]}; refusing it (tampered or mixed up).")
    for name, entry in listed.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {str(path)!r} is missing (partial checkpoint).")
        if path.stat().st_size != entry["bytes"] or _sha256(path) != entry["sha256"]:
            raise CheckpointError(f"checkpoint file {str(path)!r} does not match its manifest checksum "
                                  "(changed after it was written); refusing the checkpoint.")
    return manifest


def read(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(trainer_state.json, trainer tensors) of a verified checkpoint."""
    verify(folder)
    return json.loads((folder / STATE).read_text()), load_file(str(folder / TENSORS))


def rank_rng(state: dict[str, Any], tensors: dict[str, torch.Tensor], rank: int):
    """The RNG state rank `rank` saved, or None when the run had fewer ranks then."""
    prefix = f"rng/{rank}/"
    mine = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    if not mine or rank >= len(state.get("rng", [])):
        return None
    return mine, state["rng"][rank]


def candidates(latest: Path) -> list[Path]:
    """The latest checkpoint folder, then the run's earlier ones (`step_*` siblings), newest first; the stubs of
    quarantined ones left out."""
    siblings = sorted((p for p in latest.parent.glob("step_*") if p.is_dir() and p != latest), reverse=True)
    return [p for p in [latest, *siblings] if not is_stub(p)]


def latest_good(latest: Path, refused: list[Path] | None = None) -> Path:
    """The newest checkpoint of the run that verifies; the refused ones are logged with their reason (and
    appended to `refused`, for `quarantine` once every rank has read the good one)."""
    reasons = []
    for folder in candidates(latest):
        try:
            verify(folder)
        except CheckpointError as err:
            reasons.append(str(err))
            log.warning(f"[adept] {err}")
            if refused is not None:
                refused.append(folder)
            continue
        if folder != latest:
            log.warning(f"[adept] resuming from the earlier checkpoint {str(folder)!r} instead")
        return folder
    raise CheckpointError("no checkpoint of this run verifies, so nothing is loaded and nothing is overwritten: "
                          + " | ".join(reasons) + " Fix: restore the files, or start a new run with another --name.")


# ------------------------------------------------------------------------------------------ quarantine
# A refused checkpoint is evidence (of tampering, or of a writer that died): it is moved out of Ray Train's reach
# rather than left for its retention (`num_checkpoints_to_keep`) to delete. Ray Train V2 deletes by the paths it
# recorded and refuses to start a run whose recorded checkpoint is gone (`_assert_checkpoints_exist`), and its
# deletion raises on a missing path: so a stub folder holding only STUB stays at the old path for Ray to delete
# later, and a checkpoint reported again at the same step gets a fresh folder name (`free_name`).
QUARANTINE = "quarantine"
STUB = "QUARANTINED.json"


def is_stub(folder: Path) -> bool:
    """The folder a quarantined checkpoint left behind: STUB and nothing else (never loaded, never refused)."""
    return folder.is_dir() and [p.name for p in folder.iterdir()] == [STUB]


def quarantine(folders: list[Path], reason: str = "refused on resume") -> list[Path]:
    """Move each refused checkpoint folder (rank 0, after every rank read the good one) to
    `<run>/quarantine/<name>-<UTC time>/`, files intact, and leave its stub; the new paths."""
    import time

    moved = []
    for folder in folders:
        if not folder.is_dir() or is_stub(folder):
            continue
        target = folder.parent / QUARANTINE / f"{folder.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        while target.exists():
            target = target.with_name(target.name + "+")
        target.parent.mkdir(exist_ok=True)
        os.rename(folder, target)  # same run folder, same filesystem: atomic, nothing copied or lost
        folder.mkdir()
        (folder / STUB).write_text(json.dumps({"moved_to": str(target), "reason": reason}, indent=1) + "\n")
        log.warning(f"[adept] refused checkpoint {folder.name} quarantined in {str(target)!r}")
        moved.append(target)
    return moved


def quarantined(run_folder: Path) -> list[Path]:
    """Every checkpoint this run has quarantined so far (any attempt)."""
    folder = run_folder / QUARANTINE
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def free_name(run_folder: Path, name: str) -> str:
    """`name`, or `name-2`, `-3`...: a step reported again after a fallback must not land in a stub's folder
    (Ray would merge into it, and later delete it by the stub's record). Sorts after `name`, before the next step."""
    n, free = 1, name
    while (run_folder / free).exists():
        n, free = n + 1, f"{name}-{n + 1}"
    return free


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
