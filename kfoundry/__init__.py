"""kernel-foundry: compile, verify, profile and analyze kernels against PyTorch references over MCP."""

__version__ = "0.1.0"
