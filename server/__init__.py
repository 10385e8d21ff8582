"""The MCP server: tool registration, transports, worker pool and job scheduling."""
