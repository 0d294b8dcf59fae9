"""Fine-tuning: full and LoRA (:mod:`.trainer`), and the gradient-descent baselines of *ICL and
GD revisited* (:mod:`.layer_causal`)."""

from interp.errors import TrainingError
from interp.finetune.layer_causal import GD_METHODS, causal_lm_loss, layer_causal_loss, train_gd
from interp.finetune.trainer import PRESETS, TrainConfig, save_model, train

__all__ = ["GD_METHODS", "PRESETS", "TrainConfig", "TrainingError", "causal_lm_loss",
           "layer_causal_loss", "save_model", "train", "train_gd"]
