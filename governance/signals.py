"""What governance tells the apps above it, which it never imports (DESIGN.md §2).

Sent inside the transaction of the decision, with `send`: a receiver's error rolls the decision
back, so a decision and its effect on the run commit together or not at all. The apps above
connect their receivers in their AppConfig.ready: agents continues (or ends) the parked run,
tools checks a reviewer's edited arguments against the tool's schema.
"""

from __future__ import annotations

from django.dispatch import Signal

# sender ApprovalRequest, request=the decided (or expired) request: its run continues, or ends.
approval_decided = Signal()
# sender Escalation, escalation=the decided one: the held answer is delivered, edited, or
# replaced by the rejection.
escalation_decided = Signal()
# sender ApprovalRequest, tool_id=..., arguments=...: a receiver returns a readable problem, or
# None when the arguments fit the tool's schema (governance.approvals asks before approving an
# edit, and refuses to approve one nobody checked).
arguments_edited = Signal()
