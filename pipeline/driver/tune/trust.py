"""A sweep resumes only from Tune state this user's driver left: `Tuner.restore` unpickles it.

`tune.Tuner.restore` unpickles `tuner.pkl`, cloudpickle blobs inside the newest `experiment_state-*.json`, the
search algorithm's and callbacks' state (`basic-variant-state-*.json`, `search_gen_state-*.json`,
`searcher-state-*.pkl`, `callback-states-*.pkl`: cloudpickle whatever the suffix) and each trial's `error.pkl`.
Whoever can write those files can run code in the driver, so before Ray starts (`prepare_sweep`):

  ownership   every file and folder of the sweep folder (but `trials/` and `summary/`, below) belongs to this
              user and no other account may write it (group-write only for the user's own private group): no
              one else can have planted or changed a file, nor swap one between this check and the restore.
  manifest    `adept_tune_state.json`, written by the driver when Tune stops (`tuner.fit()` returned, raised or
              was interrupted): sha256 and size of those files. A file changed, added or removed since is
              refused by name, so a pickle planted by another process of this user is caught as well.

A driver that was killed (SIGKILL, a lost head node) left no manifest (it is removed while Tune runs): the sweep
then resumes only with `--trust-storage`, which skips the manifest, never the ownership check.

`trials/` holds each trial's Ray Train run: Train's checkpoint-manager state is JSON (pydantic) and our
checkpoints are safetensors + JSON verified by their own manifest, so nothing there is unpickled. `summary/` is
the report's CSV/JSON/PNG, written after Tune stops and never read back.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from pipeline.core.errors import UserError

MANIFEST = "adept_tune_state.json"
FORMAT = "adept-tune-state/1"
TUNER_PKL = "tuner.pkl"  # Tune restores a folder iff it holds this file (`Tuner.can_restore`)
NOT_TUNE = ("trials", "summary")  # top-level folders Tune never reads (see above)
SHOWN = 6


def tune_files(storage: Path) -> tuple[list[Path], list[Path]]:
    """(files, folders) of the sweep folder that Tune may read on a restore, symlinks included as files."""
    files, folders = [], [storage]
    for top, dirs, names in os.walk(storage):  # never follows symlinked folders
        here = Path(top)
        if here == storage:
            dirs[:] = [d for d in dirs if d not in NOT_TUNE]
        for d in list(dirs):
            if (here / d).is_symlink():
                dirs.remove(d)
                files.append(here / d)
            else:
                folders.append(here / d)
        files += [here / n for n in names]
    return sorted(files), folders


def write_manifest(storage: Path) -> None:
    """Tune stopped: record its files (atomically; the driver's own last word on them)."""
    files, _ = tune_files(storage)
    listed = {str(p.relative_to(storage)): _digest(p) for p in files if p.name != MANIFEST or p.parent != storage}
    tmp = storage / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"format": FORMAT, "files": listed}, indent=1) + "\n")
    os.replace(tmp, storage / MANIFEST)


def forget_manifest(storage: Path) -> None:
    """Tune is about to change its files: until it stops, no manifest vouches for them."""
    (storage / MANIFEST).unlink(missing_ok=True)


def check_resume(storage: Path, name: str, trust: bool = False) -> bool:
    """Refuse (UserError) Tune state that Tune would unpickle unless both checks pass; True if there is any."""
    if not (storage / TUNER_PKL).exists() and not (storage / TUNER_PKL).is_symlink():
        return False  # Tune starts afresh: it unpickles nothing of this folder
    files, folders = tune_files(storage)
    _check_owners(storage, files, folders)
    if trust:
        return True
    manifest = storage / MANIFEST
    if not manifest.is_file():
        raise UserError(f"sweep name: sweep {name!r} in {str(storage)!r} did not stop cleanly (its driver was "
                        f"killed), so no manifest ({MANIFEST}) vouches for Tune's state, and resuming unpickles "
                        f"{str(storage / TUNER_PKL)!r} and Tune's other state files (running code); if only you write "
                        "that folder, re-run with --trust-storage, else start the sweep under another name.")
    try:
        listed = json.loads(manifest.read_text())["files"]
        listed.items()
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"sweep name: {str(manifest)!r} is unreadable ({err}); start the sweep under another name, "
                        "or re-run with --trust-storage if you checked the folder yourself.") from None
    present = {str(p.relative_to(storage)): p for p in files if p != manifest}
    added = sorted(set(present) - set(listed))
    missing = sorted(set(listed) - set(present))
    changed = sorted(f for f in set(present) & set(listed) if _digest(present[f]) != listed[f])
    if added or missing or changed:
        what = "; ".join(f"{kind} {[str(storage / f) for f in names[:SHOWN]]}" + (" ..." if len(names) > SHOWN else "")
                         for kind, names in (("changed", changed), ("added", added), ("missing", missing)) if names)
        raise UserError(f"sweep name: Tune's state of sweep {name!r} differs from what its driver left when it "
                        f"stopped ({what}), and resuming would unpickle it (running code); restore the files or "
                        "start the sweep under another name (--trust-storage resumes anyway, if you made the "
                        "change yourself).")
    return True


def _check_owners(storage: Path, files: list[Path], folders: list[Path]) -> None:
    """The sweep's tree: yours, no symlinks, writable by you alone. Its ancestors: yours or root's, and writable by
    others only with the sticky bit (/tmp), else someone could rename the whole sweep folder away and plant theirs."""
    me, tree = os.geteuid(), {*folders, *files}
    for path in [*reversed(storage.resolve().parents), *folders, *files]:
        st = path.lstat()
        ancestor = path not in tree
        foreign_write = st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and not _private_group(st.st_gid, me))
        if ancestor:
            if st.st_uid in (0, me) and not (foreign_write and not st.st_mode & stat.S_ISVTX):
                continue
            problem = (f"(a folder above the sweep) belongs to {_user(st.st_uid)}" if st.st_uid not in (0, me) else
                       f"(a folder above the sweep) is writable by other accounts (mode {stat.filemode(st.st_mode)})")
        elif stat.S_ISLNK(st.st_mode):
            problem = "is a symlink (Tune would read whatever it points to)"
        elif st.st_uid != me:
            problem = f"belongs to {_user(st.st_uid)}, not to you ({_user(me)})"
        elif foreign_write:
            problem = f"is writable by other accounts (mode {stat.filemode(st.st_mode)})"
        else:
            continue
        raise UserError(f"sweep name: {str(path)!r} {problem}, and resuming sweep {str(storage)!r} unpickles "
                        "Tune's state (running code), so whoever can write there could run code as you; start the "
                        f"sweep under another name (in a storage_path only you can write), or, if every file is "
                        f"yours: `chmod -R go-w {storage}`.")


def _private_group(gid: int, uid: int) -> bool:
    """The user's own group (a umask of 002 makes files group-writable): named as the user, no other member."""
    try:
        import grp
        import pwd

        user, group = pwd.getpwuid(uid).pw_name, grp.getgrgid(gid)
    except (ImportError, KeyError):
        return False
    return group.gr_name == user and set(group.gr_mem) <= {user}


def _user(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _digest(path: Path) -> dict:
    if path.is_symlink():  # never followed (the ownership check refuses it anyway)
        return {"symlink": os.readlink(path)}
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}
