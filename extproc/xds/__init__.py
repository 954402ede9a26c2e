"""xds: Envoy configuration rendered from a policy: the whole static bootstrap (`bootstrap`), and
for `rungway up` the split hot reload needs (`resources`): a bootstrap that never changes, and
the clusters and route tables of every kept revision, served to Envoy from watched files.
May import: core, policy, routing.
"""
