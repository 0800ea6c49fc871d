# zt-relay: one image, two entry points.
#   default command     zt-relay            (the relay; TCP 8443, health/metrics 9090)
#   other entry point   zt-relay-operator   (the Kopf operator)
#
# The build downloads nothing: it installs wheels prebuilt on the host into build/wheels
# (`python -m e2e.images build` does all of it; see README "Container image").
# BASE_IMAGE needs python3 with the venv module; both stages must use the same base,
# because the venv refers to the base's interpreter by path.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
# Lets the build script prune this stage's leftover image (the legacy builder keeps it).
LABEL org.zt-relay.stage=builder
COPY build/wheels /wheels
# --no-index: only the wheels from the build context, never a package index.
# Afterwards pip and setuptools leave the venv: the runtime stage installs nothing.
RUN python3 -m venv /opt/zt-relay \
    && /opt/zt-relay/bin/pip install --no-cache-dir --no-index --find-links /wheels \
        "zt-relay[operator]" \
    && /opt/zt-relay/bin/pip uninstall --yes pip setuptools wheel \
    && /opt/zt-relay/bin/python -m compileall -q /opt/zt-relay

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="zt-relay" \
      org.opencontainers.image.description="TCP fallback relay for ZeroTier, and its Kubernetes operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /opt/zt-relay /opt/zt-relay
# Bytecode was compiled at build time; the root filesystem is read-only at run time.
ENV PATH=/opt/zt-relay/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ZT_RELAY_LISTEN=0.0.0.0:8443 \
    ZT_RELAY_HEALTH_LISTEN=0.0.0.0:9090
# A fixed numeric UID/GID (no passwd entry needed) so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8443 9090
# The relay drains on SIGTERM (readiness turns 503, open tunnels keep relaying).
STOPSIGNAL SIGTERM
CMD ["zt-relay"]
