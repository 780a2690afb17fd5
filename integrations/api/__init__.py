"""The integration API, v1 (DESIGN.md §1): DRF views over the same services and access checks
as every other interface."""
