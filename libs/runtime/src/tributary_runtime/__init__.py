"""Process-level plumbing shared by Tributary services (never message contracts: see contracts)."""
