"""The tracking store and a registered model checked without importing MLflow: a job's first seconds.

Importing MLflow takes seconds, minutes on a loaded machine, so a job used to say nothing for that long before
refusing an unreachable server (`http://127.0.0.1:9`) or a model that is not registered. These checks use the
standard library only: a TCP connect to an HTTP store, the folder of a sqlite store, and the registry's REST API
or sqlite tables for `models:/NAME@ALIAS` / `models:/NAME/VERSION`. They refuse only what is certainly wrong;
anything they cannot tell (a proxy, authentication, another schema) is left to MLflow's own check afterwards
(`store.check_tracking_server`, the model's loading).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from pipeline.core.errors import Unreachable, UserError

TIMEOUT_S = 5.0
FIX_URI = "start the server or fix --mlflow-uri / MLFLOW_TRACKING_URI."


def probe_store(uri: str, write: bool = False) -> None:
    """A sqlite store's folder exists (and is writable, for a job that writes); an HTTP store accepts a
    connection. Other stores (file, databricks) are left to MLflow's check."""
    if uri.startswith("sqlite:"):
        path = sqlite_path(uri)
        if not path.parent.is_dir():
            raise UserError(f"mlflow_uri={uri!r}: the folder {str(path.parent)!r} does not exist; create it first "
                            "or point the URI at an existing folder (nothing was created).")
        target = path if path.exists() else path.parent
        if write and not os.access(target, os.W_OK):
            raise UserError(f"mlflow_uri={uri!r}: {str(target)!r} is not writable; choose a store this user can "
                            "write (nothing was created).")
    elif uri.startswith(("http://", "https://")):
        _connect(uri)


def sqlite_path(uri: str) -> Path:
    if not uri.startswith("sqlite:///"):
        raise UserError(f"mlflow_uri={uri!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db.")
    return Path(uri.removeprefix("sqlite:///"))


def _connect(uri: str) -> None:
    parts = urllib.parse.urlsplit(uri)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host or _proxied(parts.scheme, host):
        return  # through a proxy the direct connection says nothing: MLflow's own check decides
    try:
        socket.create_connection((host, port), timeout=TIMEOUT_S).close()
    except OSError as err:
        raise Unreachable(f"mlflow_uri: the tracking store {uri!r} is not reachable ({type(err).__name__}: "
                          f"{str(err)[:300]}); {FIX_URI}") from err


def _proxied(scheme: str, host: str) -> bool:
    return scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(host)


# ------------------------------------------------------------------------------------------ registered models
def check_registered_model(source: str, uri: str) -> None:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` exists in the registry at `uri`, else a UserError naming
    --model; a store or a form this cannot read (stages, `latest`, a proxy, auth) is left to MLflow."""
    if not source.startswith("models:/"):
        return
    probe_store(uri)
    ref = source.removeprefix("models:/")
    name, at, alias = ref.partition("@")
    version = None
    if not at:
        name, _, version = ref.partition("/")
        if not version.isdigit():
            version = None  # a stage or `latest`: only the name is checked
    if not name:
        return
    if uri.startswith("sqlite:"):
        problem = _sqlite_lookup(sqlite_path(uri), name, alias or None, version)
    elif uri.startswith(("http://", "https://")):
        problem = _rest_lookup(uri, name, alias or None, version)
    else:
        problem = None
    if problem:
        raise UserError(f"--model {source}: {problem}; register one with jobs/register_best.py, or fix the name, "
                        f"the alias / version or --mlflow-uri (registry: {uri}).")


def _sqlite_lookup(path: Path, name: str, alias: str | None, version: str | None) -> str | None:
    """What is missing, read from MLflow's registry tables; None when all is there or the tables are not the
    ones this knows (another MLflow schema: MLflow decides)."""
    if not path.is_file():
        return f"no registered model {name!r} (the store {str(path)!r} does not exist yet)"
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                                timeout=TIMEOUT_S)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "registered_models" not in tables:
                return f"no registered model {name!r} (the store has no registry yet)"
            if not db.execute("SELECT 1 FROM registered_models WHERE name = ?", (name,)).fetchone():
                return f"no registered model {name!r}"
            if alias is not None:
                found = db.execute("SELECT 1 FROM registered_model_aliases WHERE name = ? AND alias = ?",
                                   (name, alias)).fetchone()
                return None if found else f"model {name!r} has no alias @{alias}"
            if version is not None:
                found = db.execute("SELECT 1 FROM model_versions WHERE name = ? AND version = ? AND "
                                   "current_stage != 'Deleted_Internal'", (name, int(version))).fetchone()
                return None if found else f"model {name!r} has no version {version}"
    except sqlite3.Error:
        return None
    return None


def _rest_lookup(uri: str, name: str, alias: str | None, version: str | None) -> str | None:
    """What is missing, in the server's words (its REST API's refusal); None when it is there or unclear."""
    if alias is not None:
        path, query = "registered-models/alias", {"name": name, "alias": alias}
    elif version is not None:
        path, query = "model-versions/get", {"name": name, "version": version}
    else:
        path, query = "registered-models/get", {"name": name}
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}"
    request = urllib.request.Request(url, headers=_auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S):
            return None
    except urllib.error.HTTPError as err:
        try:
            body = json.loads(err.read() or b"{}")
        except ValueError:
            return None  # not MLflow's JSON (a proxy's page): MLflow decides
        message = str(body.get("message", "")) if isinstance(body, dict) else ""
        code = body.get("error_code") if isinstance(body, dict) else None
        # a missing model or version: 404 RESOURCE_DOES_NOT_EXIST; a missing alias (MLflow 3): 400
        # INVALID_PARAMETER_VALUE "Registered model alias X not found."
        missing = (err.code == 404 and code == "RESOURCE_DOES_NOT_EXIST") or (
            err.code == 400 and code == "INVALID_PARAMETER_VALUE" and alias is not None and "not found" in message)
        return (message.rstrip(".") or f"{name!r} not found") if missing else None
    except (OSError, ValueError):
        return None


def _auth_headers() -> dict[str, str]:
    """MLflow's own client variables, so a server with basic or token auth answers this probe too."""
    token, user = os.environ.get("MLFLOW_TRACKING_TOKEN"), os.environ.get("MLFLOW_TRACKING_USERNAME")
    if token:
        return {"Authorization": f"Bearer {token}"}
    if user:
        secret = base64.b64encode(f"{user}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}".encode()).decode()
        return {"Authorization": f"Basic {secret}"}
    return {}
