"""Who may call the gateways and how often: API keys, request guard, rate limits, audit trail."""
