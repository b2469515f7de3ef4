"""Development tools: not shipped; imported by tests, bench and demo only."""
