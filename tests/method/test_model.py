import pytest
import torch
from wrapped import BACKBONES, METHOD_CONFIGS, inputs, make_model

from adept import AdeptConfig, get_adept_model
from adept.model import IGNORE_INDEX

MATRIX = [(b, m) for b in BACKBONES for m in METHOD_CONFIGS]


def manual_inputs_embeds(model, input_ids):
    """The method written out from the weights, independently of the module code."""
    e = model.base_model.get_input_embeddings().weight[input_ids]
    if model.config.method == "adept":
        f = model.ffn
        e = e + torch.relu(e @ f.w1 + f.b1) @ f.w2 + f.b2
    elif model.config.method == "dept":
        po = model.position_offset
        e = e + (po.lora_A @ po.lora_B)[: input_ids.shape[1]] * (8.0 / po.lora_A.shape[1] ** 0.5)
    p = model.prompt.weight.unsqueeze(0).expand(input_ids.shape[0], -1, -1)
    return torch.cat([p, e], dim=1)


@pytest.mark.parametrize(("backbone", "method"), MATRIX)
def test_forward_feeds_the_backbone_prompt_plus_offset_embeddings(backbone, method, tok):
    model = make_model(backbone, method, tok)
    b = inputs(tok, backbone)
    ids, mask = b.pop("input_ids"), b.pop("attention_mask")
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, **b)
        embeds = manual_inputs_embeds(model, ids)
        full_mask = torch.cat([torch.ones(2, 4, dtype=mask.dtype), mask], dim=1)
        expected = model.base_model(inputs_embeds=embeds, attention_mask=full_mask, **b)
    torch.testing.assert_close(out.logits, expected.logits, rtol=0, atol=1e-5)
    if backbone != "t5":
        assert out.logits.shape[1] == 4 + ids.shape[1]  # logits cover the prompt positions too


@pytest.mark.parametrize(("backbone", "method"), MATRIX)
def test_only_adapter_parameters_train(backbone, method, tok):
    model = make_model(backbone, method, tok)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.adapter_named_parameters()}
    d = model.hidden_size
    assert model.num_trainable_parameters() == model.config.num_trainable_params(d)
    expected = {"adept": 4 * d + 2 * d * 3 + 3 + d, "dept": 4 * d + 12 * 2 + 2 * d, "prompt": 4 * d}[method]
    assert model.num_trainable_parameters() == expected


def test_offset_is_zero_at_init_so_adept_starts_as_prompt_tuning(tok):
    cfg = dict(num_virtual_tokens=4, seed=3)
    adept = get_adept_model(BACKBONES["llama"](), AdeptConfig(method="adept", ffn_hidden_size=5, **cfg), tok).eval()
    pt = get_adept_model(BACKBONES["llama"](), AdeptConfig(method="prompt", **cfg), tok).eval()
    b = inputs(tok, "llama")
    with torch.no_grad():
        assert torch.equal(adept(**b).logits, pt(**b).logits)


@pytest.mark.parametrize(("backbone", "method"), MATRIX)
def test_training_lowers_loss_and_leaves_backbone_bit_identical(backbone, method, tok):
    model = make_model(backbone, method, tok, randomize_offsets=False)
    before = {n: p.detach().clone() for n, p in model.base_model.named_parameters()}
    model.train()
    b = inputs(tok, backbone)
    if backbone == "t5":
        labels = b.pop("decoder_input_ids")[:, 1:].contiguous()
    else:
        labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, IGNORE_INDEX)
    opt = torch.optim.AdamW(model.parameter_groups(prompt_lr=0.3, offset_lr=0.1), eps=1e-6, weight_decay=0.0)
    losses = []
    for _ in range(20):
        loss = model(**b, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    for n, p in model.base_model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_causal_labels_get_ignore_index_on_prompt_positions(tok):
    model = make_model("llama", "adept", tok)
    b = inputs(tok, "llama")
    labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, IGNORE_INDEX)
    with torch.no_grad():
        out = model(**b, labels=labels)
        logits = out.logits[:, :-1]
        shifted = torch.cat([torch.full((2, 4), IGNORE_INDEX), labels], dim=1)[:, 1:]
        expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), shifted.reshape(-1))
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize(("backbone", "method"), MATRIX)
def test_generate_works(backbone, method, tok):
    model = make_model(backbone, method, tok)
    b = inputs(tok, backbone)
    b.pop("decoder_input_ids", None)
    out = model.generate(**b, max_new_tokens=3, do_sample=False)
    if backbone == "t5":
        assert out.shape[0] == 2 and out.shape[1] <= 4
    else:
        assert out.shape == (2, b["input_ids"].shape[1] + 3)
        assert torch.equal(out[:, : b["input_ids"].shape[1]], b["input_ids"])


@pytest.mark.parametrize("method", ["adept", "dept"])
def test_causal_generation_offsets_every_fed_back_token(method, tok):
    """Cached generation must equal re-running the full forward (every token offset) at each step."""
    model = make_model("llama", method, tok)
    model.base_model.generation_config.eos_token_id = None  # always 6 steps, like the loop below
    ids = tok(["good movie plot"], return_tensors="pt")["input_ids"]
    generated = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
    current = ids
    with torch.no_grad():
        for _ in range(6):
            next_id = model(input_ids=current).logits[:, -1].argmax(-1, keepdim=True)
            current = torch.cat([current, next_id], dim=1)
    assert torch.equal(generated, current)
    # and it differs from what the official code does (offset only the first step), else the test proves nothing
    official = model.base_model.generate(
        inputs_embeds=model._prompted_inputs(ids, None)[0], max_new_tokens=6, do_sample=False
    )
    assert not torch.equal(generated[:, ids.shape[1]:], official)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_inputs_embeds_are_refused(backbone, tok):
    model = make_model(backbone, "adept", tok)
    with pytest.raises(ValueError, match="inputs_embeds"):
        model(inputs_embeds=torch.zeros(1, 3, model.hidden_size))
    with pytest.raises(ValueError, match="inputs_embeds"):
        model.generate(input_ids=torch.tensor([[3, 4]]), inputs_embeds=torch.zeros(1, 2, model.hidden_size))


def test_dept_refuses_inputs_longer_than_s(tok):
    model = make_model("t5", "dept", tok)
    with pytest.raises(ValueError, match="max_length=12"):
        model(input_ids=torch.ones(1, 13, dtype=torch.long), decoder_input_ids=torch.zeros(1, 1, dtype=torch.long))


def test_prompt_init_modes(tok):
    base = BACKBONES["t5"]()
    table = base.get_input_embeddings().weight
    text = get_adept_model(base, AdeptConfig(method="prompt", num_virtual_tokens=7, prompt_init_text="good movie"), tok)
    ids = tok("good movie")["input_ids"]  # two word ids, tiled to 7
    assert torch.equal(text.prompt.weight, table[(ids * 4)[:7]])
    sample = get_adept_model(BACKBONES["t5"](), AdeptConfig(method="prompt", num_virtual_tokens=5,
                                                            prompt_init="sample_vocab"))
    assert all(any(torch.equal(row, t) for t in table) for row in sample.prompt.weight)
    rand = get_adept_model(BACKBONES["t5"](), AdeptConfig(method="prompt", num_virtual_tokens=5, prompt_init="random"))
    assert not any(torch.equal(row, t) for row in rand.prompt.weight for t in table)


def test_text_init_without_tokenizer_explains_the_fix():
    with pytest.raises(ValueError, match="tokenizer="):
        get_adept_model(BACKBONES["t5"](), AdeptConfig(method="prompt", num_virtual_tokens=3))


def test_parameter_groups_have_no_empty_group(tok):
    groups = make_model("t5", "adept", tok).parameter_groups(prompt_lr=0.3, offset_lr=1e-4)
    assert [(g["name"], g["lr"], len(g["params"])) for g in groups] == [("prompt", 0.3, 1), ("offset", 1e-4, 4)]
    assert [g["name"] for g in make_model("t5", "prompt", tok).parameter_groups(0.3, 1e-4)] == ["prompt"]
    no_prompt = make_model("t5", "adept", tok, num_virtual_tokens=0)
    assert [g["name"] for g in no_prompt.parameter_groups(0.3, 1e-4)] == ["offset"]


def test_bf16_backbone_runs(tok):
    model = make_model("llama", "adept", tok)
    model.base_model.to(torch.bfloat16)
    out = model(**inputs(tok, "llama"))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits.float()).all()
