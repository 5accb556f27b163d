"""What the gateways share: point rules (``points``) and batch encoding/publishing (``batches``)."""
