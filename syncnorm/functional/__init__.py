"""Pure numpy kernels of the normalizations: no state, no MPI, no torch.

`stats` holds the one statistics step (local or over a group's exchange) and the running-statistics
update; `moments` the shifted sums it is built on; `batch_norm`, `norms`, `lrn` the layers'
forward and backward passes; `elementwise` and `columns` their blocked passes; `blocks` the block
sizes and working-dtype rule.
"""
from .moments import mean_var, moments, poorly_shifted
from .stats import Mode, StepPlan, choose_shift, group_stats, plan_stats, running_update

__all__ = ["moments", "mean_var", "poorly_shifted", "choose_shift", "group_stats", "plan_stats",
           "running_update", "Mode", "StepPlan"]
