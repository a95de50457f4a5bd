"""The `dpo:` section of a training config (used with `objective: dpo`): loss, β and its options.

Defaults are TRL's (DPOConfig: β 0.1, sigmoid loss; CPOConfig for SimPO: γ 0.5).
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


class DPOConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    loss: Literal["sigmoid", "ipo", "robust", "hinge", "simpo"] = Field(
        "sigmoid", description="sigmoid: DPO (Rafailov et al.); ipo: IPO, length-normalized as TRL; robust: "
        "Robust DPO; hinge: SLiC; simpo: reference-free SimPO (mean log-prob, margin gamma).")
    beta: float = Field(0.1, gt=0, description="β: how far the policy may move from the reference (IPO's τ).")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Probability that a label is flipped: conservative "
                                   "DPO (cDPO) for sigmoid and simpo, Robust DPO's ε for robust.")
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO's target reward margin γ.")
    ref_batch_size: Optional[int] = Field(None, ge=1, description="Pairs per forward pass when the reference "
                                          "log-probs are computed (default: micro_batch_size).")
