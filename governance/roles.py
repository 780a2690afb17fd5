"""The role groups of DESIGN.md §6; teams are further groups beside them."""

GOVERNANCE_ADMIN = "Governance admin"
REVIEWER = "Reviewer"
MEMBER = "Member"
INTEGRATION = "Integration"

ROLE_GROUPS = (GOVERNANCE_ADMIN, REVIEWER, MEMBER, INTEGRATION)
