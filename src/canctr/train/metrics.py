"""CTR metrics: AUC, GAUC, logloss and their summary dict, defined in the neutral `canctr.metrics` (numpy
only, shared with data preparation) and re-exported here for the trainer."""

from canctr.metrics import auc, ctr_metrics, gauc, logloss

__all__ = ["auc", "ctr_metrics", "gauc", "logloss"]
