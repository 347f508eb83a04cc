"""User errors are a type: the project's error classes are `UserError`s, and one unknown-key check serves every
config (TrainConfig, the sweep section, a custom-task YAML, the serving config and its load options)."""

import pytest

from pipeline.core.config import TrainConfig, check_known_keys
from pipeline.core.errors import MissingFile, UnknownName, Unreachable, UserError

pytestmark = pytest.mark.house


def test_the_project_error_classes_are_user_errors():
    from pipeline.core.backbones import BackboneError
    from pipeline.driver.ray_setup import RayStartError
    from pipeline.serving.config import InputError
    from pipeline.worker.checkpoint import CheckpointError

    for cls in (BackboneError, CheckpointError, RayStartError, InputError, MissingFile, UnknownName, Unreachable):
        assert issubclass(cls, UserError), cls
    assert issubclass(UserError, ValueError)  # `except ValueError` / pytest.raises(ValueError) keep working
    assert issubclass(MissingFile, FileNotFoundError) and issubclass(Unreachable, ConnectionError)
    assert issubclass(UnknownName, KeyError)
    assert str(UnknownName("unknown task 'rtee'")) == "unknown task 'rtee'"  # not KeyError's quoted repr


def test_check_known_keys_names_the_unknown_the_closest_and_the_fix():
    check_known_keys({"a": 1}, ["a", "b"], "config key", "see X.")
    with pytest.raises(UserError) as info:
        check_known_keys({"promt_lr": 1, "a": 2}, ["a", "prompt_lr"], "config key", "see X.")
    assert str(info.value) == "unknown config key(s) ['promt_lr'] (did you mean 'prompt_lr'?); see X."
    with pytest.raises(UserError) as info:
        check_known_keys({"zzz": 1, "bb": 2}, ["aaa", "bbb"], "key", "see Y.", where="custom task spec")
    assert str(info.value) == "custom task spec: unknown key(s) ['bb', 'zzz'] (did you mean 'bbb' for 'bb'?); see Y."


def test_every_config_uses_the_one_check(tmp_path):
    from pipeline.core.tasks import CustomTaskSpec
    from pipeline.driver.tune.config import SweepConfig
    from pipeline.serving.config import ServingConfig, check_options

    cases = [
        (lambda: TrainConfig.from_dict({"r": 8, "promt_lr": 0.3}), "unknown config key(s) ['promt_lr'] (did you "
                                                                   "mean 'prompt_lr'?); the keys are the fields of"),
        (lambda: SweepConfig.from_dict({"num_sample": 3}), "unknown sweep key(s) ['num_sample'] (did you mean "
                                                           "'num_samples'?); known: ["),
        (lambda: CustomTaskSpec.from_dict({"name": "t", "train": "t.csv", "input_columns": ["a"], "label_column": "l",
                                           "verbaliser": {0: "no", 1: "yes"}}),
         "custom task spec: unknown key(s) ['verbaliser'] (did you mean 'verbalizer'?); allowed keys are ["),
        (lambda: check_options({"fold": True}), "unknown load option(s) ['fold'] (did you mean 'folded'?); the "
                                                "options are ["),
        (lambda: ServingConfig.from_model_config({"bakcbone": "x"}), "unknown model_config key(s) ['bakcbone'] "
                                                                     "(did you mean 'backbone'?); the serving "
                                                                     "settings are ["),
    ]
    for make, message in cases:
        with pytest.raises(UserError) as info:
            make()
        assert str(info.value).startswith(message), str(info.value)


def test_unknown_task_is_a_user_error_and_still_a_key_error():
    from pipeline.core.tasks import get_task

    with pytest.raises(UnknownName) as info:
        get_task("rtee")
    assert isinstance(info.value, KeyError) and str(info.value).startswith("unknown task 'rtee'; did you mean ['rte'")


@pytest.mark.parametrize(("change", "message"), [
    ({"validation_size": "abc"}, "validation_size='abc' must be int; fix it in the task YAML"),
    ({"seed": True}, "seed=True must be int"),
    ({"input_columns": 3}, "input_columns=3 must be list or dict"),
    ({"test": ["a.csv"]}, "test=['a.csv'] must be str or null"),
])
def test_a_wrongly_typed_custom_task_key_is_a_user_error(change, message):
    """YAML gives a list, a mapping or a bool anywhere: a custom-task key of the wrong type is named, not a
    TypeError from deep inside the split code."""
    from pipeline.core.tasks import load_custom_task

    spec = {"name": "t", "train": "t.csv", "input_columns": ["a"], "label_column": "l", **change}
    with pytest.raises(UserError) as info:
        load_custom_task(spec)
    assert str(info.value).startswith(f"custom task 't': {message}"), str(info.value)
