"""Signals billing sends to the layers above it (billing never imports them).

`budget_state_changed(sender, tenant, exhausted)`: a tenant's monthly budget became spent, or
no longer is (a new month, a raised budget). fleet recompiles the policy bundle, so
`on_budget_exhausted` (downgrade or block) reaches the nodes. Sent inside the transaction
that changed the state: receivers defer their work to its commit.
"""

from django.dispatch import Signal

budget_state_changed = Signal()
