"""Grid mode: many points of one path in one batched forward on the resident base (issue 16).

Every batch row sits at its own point (per layer too, for schedules): branches on the updated modules add or apply
the row's share of the update instead of writing W(alpha) into the weights. `branches` has one kind per way an
update enters a layer; `model` installs them from a Rewinder and sets the rows' points.
"""

from .model import Grid, install, plan

__all__ = ["Grid", "install", "plan"]
