"""Health: what Rungway knows about every rung endpoint (H1-H4), pure.

Owns: circuits, the board (observations in, state out), degradation scores, which probes are
due, and whether an answer keeps its task's contract. May import: core, policy, translate.
"""
