"""Training: traces to SFT examples; SFT (full, LoRA, QLoRA, DoRA) through TRL, in one pass, as a curriculum or as
branch experts; logit KD from a teacher that shares the student's tokenizer."""

from branchmerge.train.branches import plan_branches, train_branches
from branchmerge.train.curriculum import CurriculumStage, load_curriculum, train_curriculum
from branchmerge.train.kd import KDSettings, train_kd
from branchmerge.train.kd_cache import cache_teacher_logits
from branchmerge.train.sft import SFTSettings, TrainResult, train_sft
from branchmerge.train.sft_data import SFTBuildReport, build_sft_examples

__all__ = [
    "CurriculumStage",
    "KDSettings",
    "SFTBuildReport",
    "SFTSettings",
    "TrainResult",
    "build_sft_examples",
    "cache_teacher_logits",
    "load_curriculum",
    "plan_branches",
    "train_branches",
    "train_curriculum",
    "train_kd",
    "train_sft",
]
