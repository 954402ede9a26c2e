"""xds: Envoy configuration rendered from a policy (the bootstrap, and its listeners and clusters as an
Istio EnvoyFilter; routes and ADS later).
May import: core, policy, routing.
"""
