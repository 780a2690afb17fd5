"""Evaluations (issue 25): a set of questions per agent with what good answers hold, put to a
version of the agent through the real runtime in sandbox mode, scored and stored.

- scoring: pure functions, from a case and what its run did to the case's scores;
- services: evaluation_start (queues), evaluation_execute (runs every case), the sets' writes;
- selectors: version_evaluation_passed (a release's gate), evaluation_compare.
"""
