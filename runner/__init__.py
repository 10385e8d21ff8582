"""The job runner beneath the MCP face: device queues, warm workers, sandboxes, the typed wire, the three roles."""
