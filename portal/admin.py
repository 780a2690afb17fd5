"""The portal's pages in the admin console: the second factor's audited reset on the users' list."""

from portal import second_factor_admin  # noqa: F401 - registers on import
