"""Training losses: listwise distillation (the default), InfoNCE and MarginMSE baselines, and gradient caching."""

from __future__ import annotations

from specialize.train.base import ListLoss
from specialize.train.cached import CachedLoss
from specialize.train.infonce_loss import InfoNCELoss
from specialize.train.listwise_loss import ListwiseDistillationLoss
from specialize.train.margin_mse_loss import MarginMSELoss

__all__ = ["CachedLoss", "InfoNCELoss", "ListLoss", "ListwiseDistillationLoss", "MarginMSELoss"]
