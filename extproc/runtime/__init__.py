"""Runtime: every piece of I/O. The gRPC server, the worker's shared state, `rungway up`'s
supervisor (Envoy, workers, prober, admin HTTP), metrics and the health-bus transports.
May import anything of ours.
"""
