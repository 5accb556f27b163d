"""The ``tributary`` operator CLI: commands against the bus, the registries and the services."""
