"""Names never leave their folder: a fit's or a sweep's `name`, `experiment` and a registered model's name are
refused as '.', '..', '.hidden' or 'a/b' (one check, `pipeline.core.config.check_name`), with `error:` and exit 2
before anything is written; a path built from a name must also resolve inside its root (`inside`)."""

import pytest
import ray
import yaml

from jobs.register_best import main as register_main
from jobs.train_adept import main as train_main
from jobs.tune_adept import main as tune_main
from pipeline.core.config import check_name, inside
from pipeline.core.errors import UserError

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("no_ray")]

BAD = ["..", ".", ".hidden", "a/b", "../escape", ""]


@pytest.fixture
def box(tmp_path):
    """The storage path and store live in `box`: after a refusal nothing may exist there or beside it (but the
    test's own `cfg` folder)."""
    (tmp_path / "box").mkdir()
    return tmp_path / "box"


def refused(capsys, rc, field, box):
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith(f"error: {field}: ") and "not a usable name" in errors[0], err
    assert not ray.is_initialized()
    assert list(box.iterdir()) == [] and {p.name for p in box.parent.iterdir()} <= {"box", "cfg"}


def fit_args(task, backbone, box):
    return ["--task", str(task), "--backbone", str(backbone), "--r", "8", "--storage-path", str(box / "runs"),
            "--mlflow-uri", f"sqlite:///{box / 'm.db'}"]


@pytest.mark.parametrize("bad", BAD)
def test_a_fit_name_or_experiment_that_leaves_its_folder_is_refused(bad, synthetic_task, tiny_backbone, box, capsys):
    refused(capsys, train_main([*fit_args(synthetic_task, tiny_backbone, box), "--name", bad]), "name", box)
    refused(capsys, train_main([*fit_args(synthetic_task, tiny_backbone, box), "--set", f"experiment={bad!r}"]),
            "experiment", box)


@pytest.mark.parametrize("bad", BAD)
def test_a_sweep_name_or_experiment_that_leaves_its_folder_is_refused(bad, synthetic_task, tiny_backbone, box, capsys,
                                                                      tmp_path):
    config = {"task": str(synthetic_task), "backbone": str(tiny_backbone), "r": 8, "max_steps": 20, "eval_steps": 10,
              "storage_path": str(box / "runs"), "mlflow_uri": f"sqlite:///{box / 'm.db'}",
              "sweep": {"space": {"m": [2, 4]}}}
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    for args, field in ((["--name", bad], "sweep name"), (["--sweep-set", f"name={bad!r}"], "sweep name"),
                        (["--set", f"experiment={bad!r}"], "experiment"), (["--set", f"name={bad!r}"], "name")):
        refused(capsys, tune_main(["--config", str(path), *args]), field, box)


@pytest.mark.parametrize("bad", BAD)
def test_a_registered_model_sweep_or_experiment_name_is_refused_before_the_store(bad, box, capsys):
    uri = f"sqlite:///{box / 'm.db'}"
    for args, field in ((["--sweep", "s", "--name", bad], "--name"), (["--sweep", bad], "--sweep"),
                        (["--sweep", "s", "--experiment", bad], "--experiment")):
        refused(capsys, register_main(["--mlflow-uri", uri, *args]), field, box)


def test_plain_names_pass_and_the_registry_checks_its_own(tmp_path):
    for good in ("run-1", "123", "a.b", "_x", "adept-movie-sentiment", "v1.2_final"):
        assert check_name("name", good) == good
    from pipeline.serving.registry import Candidate, register

    candidate = Candidate("r1", 1.0, "val_accuracy", "max", "demo", {}, {})
    with pytest.raises(UserError, match="registered model name: '..'"):
        register(f"sqlite:///{tmp_path / 'm.db'}", candidate, name="..")
    assert not (tmp_path / "m.db").exists()


def test_paths_built_from_names_stay_inside_their_root(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    assert inside(root, root / "run-1", "name") == (root / "run-1").resolve()
    for escape in (root / ".." / "x", root, root / "a" / ".." / ".."):
        with pytest.raises(UserError, match="^name: .* outside"):
            inside(root, escape, "name")
    (tmp_path / "elsewhere").mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere")  # a run folder that is a symlink out of storage_path
    with pytest.raises(UserError, match="outside"):
        inside(root, root / "link", "name")


def test_a_run_folder_symlinked_out_of_storage_is_refused_before_ray(synthetic_task, tiny_backbone, tmp_path, capsys):
    storage, outside = tmp_path / "runs", tmp_path / "outside"
    storage.mkdir()
    outside.mkdir()
    (storage / "linked").symlink_to(outside)
    rc = train_main(["--task", str(synthetic_task), "--backbone", str(tiny_backbone), "--r", "8", "--name", "linked",
                     "--storage-path", str(storage), "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "error: name: " in err and "outside" in err, err
    assert list(outside.iterdir()) == [] and not ray.is_initialized()
