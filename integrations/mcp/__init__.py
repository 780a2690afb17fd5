"""Warden as an MCP server: /mcp (server.py), its callers (auth.py) and what each may call
(catalogue.py)."""
