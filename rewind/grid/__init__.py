"""Grid mode: many points of one path in one batched forward on the resident base (issue 16).

Every batch row sits at its own point (per layer too, for schedules): branches on the updated modules add or apply
the row's share of the update instead of writing W(alpha) into the weights. `branches` has one kind per way an
update enters a layer; `model` installs them from a Rewinder and sets the rows' points. `stacked` is the other
way: each point's own weights, written by its path and stacked, for models whose copies fit (any path, and points
of several paths in one pass).
"""

from .model import Grid, install, plan

__all__ = ["Grid", "install", "plan"]
