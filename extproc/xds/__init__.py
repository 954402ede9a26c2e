"""xds: Envoy configuration rendered from a policy (the bootstrap now; routes and ADS later).
May import: core, policy, routing.
"""
