"""Deploying one width: measure exported widths on this machine (latency, memory) and pick the
most accurate width within a latency/memory budget (issue #14; docs/deploy.md)."""
