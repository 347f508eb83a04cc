import pytest

from adept import AdeptConfig, budget_rank, count_trainable_params


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"method": "lora"}, "method"),
        ({"method": "prompt", "num_virtual_tokens": 0}, "num_virtual_tokens"),
        ({"method": "adept", "num_virtual_tokens": -1, "ffn_hidden_size": 4}, "num_virtual_tokens"),
        ({"method": "adept"}, "ffn_hidden_size"),
        ({"method": "adept", "ffn_hidden_size": 0}, "ffn_hidden_size"),
        ({"method": "adept", "ffn_hidden_size": 4, "ffn_dropout": 1.0}, "ffn_dropout"),
        ({"method": "dept", "max_length": 16}, "rank"),
        ({"method": "dept", "rank": 4}, "max_length"),
        ({"method": "prompt", "prompt_init": "zeros"}, "prompt_init"),
        ({"method": "prompt", "prompt_init_text": "  "}, "prompt_init_text"),
    ],
)
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        AdeptConfig(**kwargs)


def test_offset_only_methods_allow_zero_prompt_tokens():
    assert AdeptConfig(method="adept", num_virtual_tokens=0, ffn_hidden_size=49).num_virtual_tokens == 0
    assert AdeptConfig(method="dept", num_virtual_tokens=0, rank=4, max_length=8).num_virtual_tokens == 0


def test_dict_round_trip_and_unknown_keys():
    cfg = AdeptConfig(method="dept", num_virtual_tokens=5, rank=3, max_length=11)
    assert AdeptConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown AdeptConfig field"):
        AdeptConfig.from_dict({**cfg.to_dict(), "prefix_len": 3})


def test_paper_budget_example():
    # d=768, m=60, PT budget M=100: ADePT r=19 with 76,051 params; DePT (s=256) r=30.
    assert budget_rank("adept", 768, 60, 100) == 19
    assert count_trainable_params("adept", 768, 60, 19) == 76_051
    assert budget_rank("dept", 768, 60, 100, max_length=256) == 30
    assert count_trainable_params("dept", 768, 60, 30, 256) == 76_800
    assert count_trainable_params("prompt", 768, 100) == 76_800


@pytest.mark.parametrize(
    ("d", "m", "r", "params"),
    [(768, 40, 29, 76_061), (768, 80, 9, 76_041), (768, 0, 49, 76_081), (1024, 60, 19, 101_395), (4096, 60, 19, 405_523)],
)
def test_adept_budget_table(d, m, r, params):
    assert budget_rank("adept", d, m) == r
    assert count_trainable_params("adept", d, m, r) == params
    assert params <= 100 * d < count_trainable_params("adept", d, m, r + 1)


@pytest.mark.parametrize(("s", "m", "r"), [(256, 80, 15), (256, 40, 45), (512, 60, 24)])
def test_dept_budget_table(s, m, r):
    assert budget_rank("dept", 768, m, max_length=s) == r
    assert count_trainable_params("dept", 768, m, r, s) <= 100 * 768 < count_trainable_params("dept", 768, m, r + 1, s)


def test_impossible_budget_is_explained():
    with pytest.raises(ValueError, match="impossible budget"):
        budget_rank("adept", 768, 100, 100)
    with pytest.raises(ValueError, match="max_length"):
        budget_rank("dept", 768, 60)
