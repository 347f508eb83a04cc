"""`PackedAdeptModel`: K adapters ("members") over ONE frozen backbone, trained in one forward and backward.

ADePT, DePT and prompt tuning change only the backbone's input, and the backbone is frozen and shared, so a batch
whose rows belong to different members computes, row by row, what each member computes alone, provided

* each row carries exactly its solo content: row b of member k is laid out as in member k's solo run,

      [P_k (m_k rows) ; E_b + offset_k(E_b) (L columns)] + masked pads up to the pack's width m_max + L

  The content starts at column 0 of every row, so column c holds solo column c, and `position_ids = arange`
  gives every real position the number it has alone (the first prompt row is position 0). Pads go at the end
  (attention_mask 0): a causal row never sees them, and no query row is ever fully masked (a fully masked row
  would give NaN under SDPA, and 0·NaN leaks through attention weights). Seq2seq (T5): only the encoder input
  is laid out so; relative position buckets depend on distances between real tokens, which are unchanged.
* offsets are member-wise: member k's FFN (ADePT) or A_k·B_k (DePT, row i for input column i, the row's own
  input position as alone) runs on member k's rows only -- no wasted work, no dropout draws a solo run
  never makes;
* the loss is L = Σ_k mean_k (mean over member k's own label tokens). θ_k appears only in member k's rows, so
  ∂L/∂θ_k = ∂mean_k/∂θ_k exactly: member k's gradient is its solo gradient. One mean over the whole batch
  would scale each gradient by ≈ B_k/B and couple members through their token counts.

Optimiser state is per parameter, so one AdamW over `parameter_groups` (per member, each with its own lr) is K
optimisers; clipping must be per member too (`clip_grad_norms`): one global norm lets a member's large gradient
shrink every other member's step. A diverged member is isolated by dropping its gradients (`drop_grads`).
Each member is an ordinary `AdeptModel` sharing the backbone object (`member_model`), so it saves and loads in
the ordinary adapter format (`save_member`, `from_pretrained`).

Limits: rows must not interact inside the backbone (true of transformers' dense LMs; a capacity-limited MoE
router would couple them). With `ffn_dropout > 0` each ADePT member draws its masks on its own rows only; from
the one global RNG in member order by default (reproducible, not bit-equal to the solo runs), or from its own
stream with `use_member_rng` (bit-equal: the pack's worker gives each member the state its solo fit starts with).
Dropout inside the backbone (0 in the backbones this project trains) would still draw from the global RNG.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import AdeptConfig
from .model import AdeptModel
from .prompted import IGNORE_INDEX, _check_shapes, labelled_head_supported

# What `concat_member_batches` pads each key with (`input_ids` / `decoder_input_ids` take the pad token id).
_PAD_VALUES = {"attention_mask": 0, "decoder_attention_mask": 0, "labels": IGNORE_INDEX}


@dataclass
class PackedOutput:
    """What `PackedAdeptModel.forward` returns (K members, B rows).

    loss: scalar Σ_k member_loss[k] (None without labels); backward gives each member its solo gradient.
    member_loss: (K,) mean loss over member k's label tokens; 0 for a member with no label token in the batch.
    member_tokens: (K,) number of label tokens of each member (0 = absent from the batch).
    logits: causal: (B, L, V), column j = the logits at input token j of the row (its solo logits at m_k + j;
      prompt positions dropped); seq2seq: the decoder's (B, T, V). None with `loss_only=True`.
    """

    loss: torch.Tensor | None = None
    member_loss: torch.Tensor | None = None
    member_tokens: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class _Member(nn.Module):
    """The adapter modules of one `AdeptModel` (the same objects): parameter names are the adapter file's keys."""

    def __init__(self, model: AdeptModel):
        super().__init__()
        self.prompt, self.ffn, self.position_offset = model.prompt, model.ffn, model.position_offset


class PackedAdeptModel(nn.Module):
    """K `AdeptModel`s that share one frozen backbone, run together on a batch with a per-row member index.

    Members may differ in method (adept / dept / prompt), m, r, s and initialisation. The backbone is held once
    (`self.base_model`); each member's adapter modules are registered under `members.<k>.` (`prompt.weight`,
    `ffn.w1`, ... as in an adapter file). Build with `from_configs` (each member initialised exactly as
    `get_adept_model` would alone), `from_pretrained` (adapter folders) or from existing `AdeptModel`s.
    """

    def __init__(self, models: Sequence[AdeptModel]):
        super().__init__()
        if not models:
            raise ValueError("PackedAdeptModel needs at least one member.")
        base = models[0].base_model
        if any(m.base_model is not base for m in models):
            raise ValueError("every member of a pack must wrap the same backbone object (it is held once, not copied).")
        self.base_model = base
        self.members = nn.ModuleList(_Member(m) for m in models)
        self._solo = tuple(models)  # not registered: their modules are `base_model` and `members.<k>` already
        self._rng: list[torch.Tensor] | None = None  # per-member RNG states for dropout (`use_member_rng`)
        self.is_encoder_decoder = models[0].is_encoder_decoder
        self.vocab_size, self.hidden_size = models[0].vocab_size, models[0].hidden_size

    @classmethod
    def from_configs(cls, base_model: nn.Module, configs: Sequence[AdeptConfig], tokenizer=None) -> PackedAdeptModel:
        """One member per config, each built as `get_adept_model(base_model, config, tokenizer)` builds it alone."""
        return cls([AdeptModel(base_model, dataclasses.replace(c, extra=dict(c.extra)), tokenizer) for c in configs])

    @classmethod
    def from_pretrained(cls, base_model: nn.Module, paths: Sequence[str | Path]) -> PackedAdeptModel:
        """A pack of adapter folders (any layout `AdeptModel.from_pretrained` reads), member k = paths[k]."""
        return cls([AdeptModel.from_pretrained(base_model, p) for p in paths])

    # ------------------------------------------------------------------ members
    def __len__(self) -> int:
        return len(self._solo)

    @property
    def configs(self) -> list[AdeptConfig]:
        return [m.config for m in self._solo]

    def member_model(self, k: int) -> AdeptModel:
        """Member k as an ordinary `AdeptModel` sharing the backbone and member k's parameters (no copy):
        generate, fold, export or evaluate it alone."""
        return self._solo[k]

    def member_parameters(self, k: int) -> list[nn.Parameter]:
        return list(self.members[k].parameters())

    def save_member(self, k: int, path: str | Path) -> None:
        """Write member k as an ordinary adapter folder (`adept_config.json` + `adept_model.safetensors`)."""
        self._solo[k].save_pretrained(path)

    def use_member_rng(self, states: Sequence[torch.Tensor] | None) -> None:
        """Draw member k's dropout masks from its own RNG stream, starting at `states[k]` (`torch.get_rng_state()`,
        or `torch.cuda.get_rng_state(device)` on a GPU): given the state its solo fit has when training starts, a
        member draws exactly the masks it draws alone, whatever the other members draw. None: the global RNG."""
        self._rng = None if states is None else [s.clone() for s in states]

    @property
    def member_rng_states(self) -> list[torch.Tensor] | None:
        """Where each member's stream stands (save it with a checkpoint; `use_member_rng` resumes it)."""
        return None if self._rng is None else [s.clone() for s in self._rng]

    def _member_offset(self, k: int, tokens: torch.Tensor) -> torch.Tensor | None:
        solo = self._solo[k]
        ffn = solo.ffn
        if not (self.training and self._rng is not None and ffn is not None and ffn.dropout > 0):
            return solo.input_offset(tokens)
        cuda = tokens.device.type == "cuda"
        get = (lambda: torch.cuda.get_rng_state(tokens.device)) if cuda else torch.get_rng_state
        put = (lambda state: torch.cuda.set_rng_state(state, tokens.device)) if cuda else torch.set_rng_state
        outside = get()
        put(self._rng[k])
        try:
            return solo.input_offset(tokens)
        finally:
            self._rng[k] = get()
            put(outside)

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, *, member: torch.Tensor, loss_only: bool = False,
                **kwargs) -> PackedOutput:
        """Rows of several members in one batch.

        input_ids, attention_mask: (B, L) as each member would get them alone (right padding; left works too).
        member: (B,) LongTensor, the member of each row (`concat_member_batches` builds it).
        labels: causal (B, L) aligned with input_ids (-100 = no loss); seq2seq the decoder's (B, T).
        loss_only: skip the full logits (causal backbones with a boolean `logits_to_keep`: the vocabulary head
          runs only where a label is, as `AdeptModel.forward(loss_only=True)`).
        kwargs go to the backbone (seq2seq: decoder_input_ids, decoder_attention_mask, ...).
        """
        _check_shapes(input_ids, attention_mask)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        member = self._check_member(member, input_ids)
        causal_labels = None if self.is_encoder_decoder else labels
        embeds, mask, placed_labels = self._packed_inputs(input_ids, attention_mask, causal_labels, member)
        if self.is_encoder_decoder:
            return self._seq2seq(embeds, mask, labels, member, **kwargs)
        return self._causal(embeds, mask, placed_labels, member, input_ids.shape[1], loss_only, **kwargs)

    def _check_member(self, member: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        if not isinstance(member, torch.Tensor) or member.shape != input_ids.shape[:1] or member.is_floating_point():
            raise ValueError(f"member must be an integer tensor (B,) = ({input_ids.shape[0]},), one member per row; got "
                             f"{getattr(member, 'shape', member)!r}.")
        member = member.to(input_ids.device, torch.long)
        if not member.numel():
            raise ValueError("PackedAdeptModel.forward got an empty batch (no rows).")
        if (member.min() < 0 or member.max() >= len(self)):
            raise ValueError(f"member ids must be in [0, {len(self)}); got {sorted(set(member.tolist()))}.")
        return member

    def _packed_inputs(self, input_ids, attention_mask, labels, member):
        """(B, W, d) embeddings, (B, W) mask and (B, W) causal labels (or None), W = m_max + L (see module doc)."""
        batch, length = input_ids.shape
        present = member.unique().tolist()
        width = max(self._solo[k].num_virtual_tokens for k in present) + length if present else length
        tokens = self.base_model.get_input_embeddings()(input_ids)  # (B, L, d): the frozen lookup, once
        embeds, masks, placed_labels, order = [], [], [], []
        for k in present:
            rows = (member == k).nonzero().squeeze(1)
            emb, msk, lab = self._member_rows(k, tokens[rows], attention_mask[rows],
                                              None if labels is None else labels[rows])
            pad = width - emb.shape[1]  # masked pads after the row's content
            embeds.append(F.pad(emb, (0, 0, 0, pad)))
            masks.append(F.pad(msk, (0, pad)))
            placed_labels.append(None if lab is None else F.pad(lab, (0, pad), value=IGNORE_INDEX))
            order.append(rows)
        inverse = torch.empty_like(member)
        inverse[torch.cat(order)] = torch.arange(batch, device=member.device)  # row b -> its place in the cat
        labels = None if labels is None else torch.cat(placed_labels)[inverse]
        return torch.cat(embeds)[inverse], torch.cat(masks)[inverse], labels

    def _member_rows(self, k, tokens, mask, labels):
        """Member k's rows laid out as alone: [P_k ; E + offset_k(E)] (B_k, m_k + L_k, d), mask, causal labels."""
        solo = self._solo[k]
        # Columns that are padding in every row of this member exist only because another member's batch is longer:
        # drop them, so the offset (and its dropout masks) runs on exactly the (B_k, L_k) the member's solo batch has.
        real = mask.bool().any(0) if labels is None else mask.bool().any(0) | (labels != IGNORE_INDEX).any(0)
        width = int(real.nonzero().max()) + 1 if real.any() else 1
        tokens, mask = tokens[:, :width], mask[:, :width]
        labels = None if labels is None else labels[:, :width]
        offset_module = solo.position_offset
        if offset_module is not None and tokens.shape[1] > offset_module.max_length:
            # DePT covers s input positions; columns past s that are pads of every row of this member (another
            # member made the batch longer) are dropped; real tokens past s are refused, as alone.
            s = offset_module.max_length
            if mask[:, s:].any() or (labels is not None and (labels[:, s:] != IGNORE_INDEX).any()):
                solo.check_input_length(tokens.shape[1])
            tokens, mask = tokens[:, :s], mask[:, :s]
            labels = None if labels is None else labels[:, :s]
        offset = self._member_offset(k, tokens)  # ADePT: FFN on these rows; DePT: rows 0..L_k-1 of A·B; PT: None
        if offset is not None:
            tokens = tokens + offset
        m = solo.num_virtual_tokens
        if m:
            tokens = torch.cat([solo.prompt(tokens.shape[0], tokens.dtype), tokens], dim=1)
            mask = torch.cat([mask.new_ones(mask.shape[0], m), mask], dim=1)
            if labels is not None:  # causal: the prompt positions carry no label, as alone
                labels = torch.cat([labels.new_full((labels.shape[0], m), IGNORE_INDEX), labels], dim=1)
        return tokens, mask, labels

    def _causal(self, embeds, mask, labels, member, length, loss_only, **kwargs) -> PackedOutput:
        # Explicit positions: the content of every row starts at column 0, so arange is each real token's solo
        # position (RoPE numerics depend on absolute positions, not only on their differences).
        positions = torch.arange(embeds.shape[1], device=embeds.device).expand(embeds.shape[0], -1)
        kwargs.setdefault("use_cache", False)
        if labels is None:
            if loss_only:
                raise ValueError("PackedAdeptModel.forward(loss_only=True) needs labels.")
            logits = self.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, **kwargs).logits
            return PackedOutput(logits=self._token_aligned(logits, member, length))
        # ForCausalLMLoss's shift: position t predicts labels[t + 1]; the last position predicts nothing.
        targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
        keep = targets != IGNORE_INDEX  # (B, W)
        if loss_only and labelled_head_supported(self.base_model):
            picked = self.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                     logits_to_keep=keep, **kwargs).logits  # (N, V): labelled positions only
            logits = None
        else:
            logits = self.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, **kwargs).logits
            picked = logits[keep]
        out = self._member_means(picked, targets[keep], member[keep.nonzero()[:, 0]])
        out.logits = None if loss_only or logits is None else self._token_aligned(logits, member, length)
        return out

    def _seq2seq(self, embeds, mask, labels, member, **kwargs) -> PackedOutput:
        if labels is not None and kwargs.get("decoder_input_ids") is None:
            kwargs["decoder_input_ids"] = self.base_model.prepare_decoder_input_ids_from_labels(labels=labels)
        logits = self.base_model(inputs_embeds=embeds, attention_mask=mask, **kwargs).logits  # (B, T, V)
        if labels is None:
            return PackedOutput(logits=logits)
        keep = labels != IGNORE_INDEX
        out = self._member_means(logits[keep], labels[keep], member[keep.nonzero()[:, 0]])
        out.logits = logits
        return out

    def _member_means(self, logits: torch.Tensor, targets: torch.Tensor, token_member: torch.Tensor) -> PackedOutput:
        """(N, V) logits of the N label tokens, their targets and members -> Σ_k mean_k and the K means."""
        token_loss = F.cross_entropy(logits.float(), targets, reduction="none")  # (N,); only labelled positions,
        # so a diverged member's NaN never enters another member's bin (index_add keeps bins apart).
        sums = token_loss.new_zeros(len(self)).index_add(0, token_member, token_loss)
        counts = torch.bincount(token_member, minlength=len(self))
        member_loss = sums / counts.clamp(min=1)
        return PackedOutput(loss=member_loss.sum(), member_loss=member_loss, member_tokens=counts)

    def _token_aligned(self, logits: torch.Tensor, member: torch.Tensor, length: int) -> torch.Tensor:
        """(B, W, V) -> (B, L, V): row b's input token j sits at column m_k + j of the packed row."""
        m = torch.tensor([s.num_virtual_tokens for s in self._solo], device=member.device)[member]  # (B,)
        index = (m[:, None] + torch.arange(length, device=member.device))[..., None].expand(-1, -1, logits.shape[-1])
        return logits.gather(1, index)

    # ------------------------------------------------------------------ training helpers
    def parameter_groups(self, prompt_lr: float | Sequence[float], offset_lr: float | Sequence[float],
                         weight_decay: float | Sequence[float] = 0.0) -> list[dict]:
        """Each member's `AdeptModel.parameter_groups` (a number or one per member for each argument), every group
        tagged `member: k` and named `member<k>.prompt` / `member<k>.offset`: one AdamW over them is K AdamWs
        (state is per parameter); give each group its own schedule factor (e.g. LambdaLR with one lambda a group)."""
        lrs = [_per_member(v, len(self), n) for v, n in
               ((prompt_lr, "prompt_lr"), (offset_lr, "offset_lr"), (weight_decay, "weight_decay"))]
        return [{**g, "name": f"member{k}.{g['name']}", "member": k}
                for k, solo in enumerate(self._solo) for g in solo.parameter_groups(*(v[k] for v in lrs))]

    def clip_grad_norms(self, max_norm: float | Sequence[float]) -> torch.Tensor:
        """Clip each member's gradients by its own total norm (as `clip_grad_norm_` on it alone); returns the (K,)
        norms before clipping (0 for a member without gradients). A global norm would couple the members."""
        limits = _per_member(max_norm, len(self), "max_norm")
        norms = []
        for k in range(len(self)):
            params = [p for p in self.member_parameters(k) if p.grad is not None]
            norms.append(torch.nn.utils.clip_grad_norm_(params, limits[k]).detach().float().cpu() if params
                         else torch.zeros(()))
        return torch.stack(norms)

    def nonfinite_members(self, member_loss: torch.Tensor | None = None) -> list[int]:
        """Members whose loss (from `PackedOutput.member_loss`) or any gradient is NaN or infinite."""
        bad = set() if member_loss is None else set(torch.nonzero(~torch.isfinite(member_loss.detach())).flatten().tolist())
        for k in range(len(self)):
            grads = [p.grad for p in self.member_parameters(k) if p.grad is not None]
            if grads and not all(torch.isfinite(g).all() for g in grads):
                bad.add(k)
        return sorted(bad)

    def drop_grads(self, members: Iterable[int]) -> None:
        """Set the gradients of `members` to None: AdamW then skips them entirely (no moment, decay or step), so
        a diverged member cannot move; the others' steps are untouched (their groups are their own)."""
        for k in members:
            for p in self.member_parameters(k):
                p.grad = None


def concat_member_batches(batches: Sequence[Mapping[str, torch.Tensor] | None] | Mapping[int, Mapping[str, torch.Tensor]],
                          pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Member k's batch (drawn as it would be alone: its seed, order, batch size) -> one packed batch + `member`.

    batches: a sequence indexed by member (None = the member takes no rows this step) or a {member: batch} map.
    Each tensor (B_k, L_k) is right-padded to the longest (input ids and decoder ids with `pad_token_id`, masks
    with 0, labels with -100) and the rows are concatenated member by member; `member` is (Σ B_k,) long.
    Extra trailing pads change nothing a row computes: they are masked, after every real token.
    """
    items = sorted(batches.items()) if isinstance(batches, Mapping) else [(k, b) for k, b in enumerate(batches)]
    items = [(k, b) for k, b in items if b is not None]
    if not items:
        raise ValueError("concat_member_batches got no batch.")
    keys = list(items[0][1])
    if any(list(b) != keys for _, b in items):
        raise ValueError("every member's batch must have the same keys.")
    packed = {}
    for key in keys:
        width = max(b[key].shape[1] for _, b in items)
        value = _PAD_VALUES.get(key, pad_token_id)
        packed[key] = torch.cat([F.pad(b[key], (0, width - b[key].shape[1]), value=value) for _, b in items])
    packed["member"] = torch.cat([torch.full((b[keys[0]].shape[0],), k, dtype=torch.long) for k, b in items])
    return packed


def _per_member(value, count: int, name: str) -> list:
    if isinstance(value, (int, float)):
        return [value] * count
    values = list(value)
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} values for {count} members; give one number or one per member.")
    return values


__all__ = ["PackedAdeptModel", "PackedOutput", "concat_member_batches"]
