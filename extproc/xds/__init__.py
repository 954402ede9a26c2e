"""xds: Envoy configuration rendered from a policy: the whole static bootstrap (`bootstrap`); for
`rungway up` the split hot reload needs (`resources`): a bootstrap that never changes, and the
clusters and route tables of every kept revision, served to Envoy from watched files; and for a
mesh that already runs Envoy, the same listeners and clusters as an Istio EnvoyFilter (`istio`).
May import: core, policy, routing.
"""
