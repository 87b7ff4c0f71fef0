"""Training: traces to SFT examples, and SFT (full or LoRA) through TRL."""

from branchmerge.train.sft import SFTSettings, TrainResult, train_sft
from branchmerge.train.sft_data import SFTBuildReport, build_sft_examples

__all__ = ["SFTBuildReport", "SFTSettings", "TrainResult", "build_sft_examples", "train_sft"]
