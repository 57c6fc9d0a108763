"""Training losses: listwise distillation (the default), InfoNCE and MarginMSE baselines, and gradient caching."""

from __future__ import annotations

from specialize.losses.base import ListLoss
from specialize.losses.cached import CachedLoss
from specialize.losses.infonce_loss import InfoNCELoss
from specialize.losses.list_margin_mse_loss import ListMarginMSELoss
from specialize.losses.listwise_loss import ListwiseDistillationLoss

__all__ = ["CachedLoss", "InfoNCELoss", "ListLoss", "ListwiseDistillationLoss", "ListMarginMSELoss"]
