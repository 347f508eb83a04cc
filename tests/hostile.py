"""What the fault tests plant: a pickle that would act if anything unpickled it, and a small verified checkpoint."""

from __future__ import annotations

import torch

from pipeline.worker import checkpoint as ckpt


class Payload:
    """Unpickling this would create `target`: the tests check that nothing ever unpickles it."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def write_checkpoint(folder, step):
    """A checkpoint folder as the recipe writes one (adapter, trainer state, manifest), with a dummy adapter."""
    folder.mkdir(parents=True)
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adept_config.json").write_text("{}")
    snapshot = ckpt.TrainerSnapshot({"param/prompt.weight": torch.ones(2, 3)}, {"optimizer_steps": step})
    ckpt.write(folder, snapshot, {"step": step}, [ckpt.rng_state()])
    return folder
