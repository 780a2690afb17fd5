"""Guardrails, one module per kind: prompt injection (injection.py), personal data (pii.py),
model output (output.py). Each is a pure function of text; the runtime decides where to apply
them and what a finding does (the agent's action, through the policy decision point)."""
