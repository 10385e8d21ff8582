"""The tools as plain typed async functions; server/ registers them with MCP, the CLI calls them directly."""
