"""The built-in trainer: entropy-matching networks (mixture MLP, U-Net), the loop, checkpoint files."""

from .io import load_network, read_loss_log
from .loop import TrainSettings, Trainer, train

__all__ = ["TrainSettings", "Trainer", "load_network", "read_loss_log", "train"]
