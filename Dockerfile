# One Dockerfile, four images; pick one with --target:
#
#   docker build --target api-gateway       -t api-gateway:latest .
#   docker build --target order-service     -t order-service:latest .
#   docker build --target inventory-service -t inventory-service:latest .
#   docker build --target payment-service   -t payment-service:latest .
#
# The images share every layer but the last (the service's own package), so
# four images cost little more disk than one.
#
# pip takes its settings from the environment, and each PIP_* setting below is
# a build arg, so the same file builds online (PyPI, or a mirror given with
# PIP_INDEX_URL) or offline from a local wheel directory, e.g. with podman:
#
#   pip wheel -r requirements.txt -w wheels/
#   podman build -v "$PWD/wheels:/wheels:ro" --build-arg PIP_NO_INDEX=1 \
#       --build-arg PIP_FIND_LINKS=/wheels --target order-service -t order-service:latest .
#
# (Docker has no `build -v`: serve the directory with `python -m http.server`
# and pass --network=host --build-arg PIP_FIND_LINKS=http://127.0.0.1:8000/.)
# BASE_IMAGE exists for machines that cannot pull python:3.11-slim and build a
# stand-in of it (scripts/k8s-smoke.sh does).

ARG BASE_IMAGE=python:3.11-slim

# ---- builder: the virtualenv with the pinned runtime dependencies ----------
FROM ${BASE_IMAGE} AS builder
ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_FIND_LINKS=""
ARG PIP_NO_INDEX=""
ARG PIP_TRUSTED_HOST=""
ARG PIP_DEFAULT_TIMEOUT=60
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY requirements.txt /tmp/requirements.txt
# A build arg that was not given reaches RUN as an empty string, which pip
# would read as a setting; drop the empty ones. pip and setuptools leave the
# venv afterwards: nothing installs packages at run time.
RUN for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_NO_INDEX PIP_TRUSTED_HOST; do \
        eval "[ -n \"\${$var}\" ] || unset $var"; \
    done \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-compile -r /tmp/requirements.txt \
 && /opt/venv/bin/pip uninstall --yes pip setuptools \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/venv/lib

# ---- runtime: what every service image has ---------------------------------
FROM ${BASE_IMAGE} AS runtime
# No .pyc written at run time (the root filesystem is read-only in
# Kubernetes); the venv and the app are compiled at build time instead.
# HOME=/tmp: anything that insists on a home directory writes to the /tmp
# volume, not the read-only root.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    DATA_DIR=/var/lib/shop
RUN groupadd --system --gid 10001 shop \
 && useradd --system --uid 10001 --gid shop --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin shop \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/shop
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY plumbing/ plumbing/
COPY shop/ shop/
RUN python -m compileall -q --invalidation-mode unchecked-hash /app
LABEL org.opencontainers.image.base.name="python:3.11-slim"

# ---- the four images ---------------------------------------------------------
# The code stays root-owned and read-only to the service user. USER is
# numeric, so Kubernetes' runAsNonRoot can check it without a passwd lookup.
# Exec form: the Python process is PID 1 and receives SIGTERM itself (it turns
# health NOT_SERVING, drains, then stops); no shell in between to swallow it.

FROM runtime AS inventory-service
COPY inventory_svc/ inventory_svc/
RUN python -m compileall -q --invalidation-mode unchecked-hash inventory_svc
USER 10001:10001
EXPOSE 50051 9101
ENTRYPOINT ["python", "-m", "inventory_svc"]

FROM runtime AS payment-service
COPY payment_svc/ payment_svc/
RUN python -m compileall -q --invalidation-mode unchecked-hash payment_svc
USER 10001:10001
EXPOSE 50052 9102
ENTRYPOINT ["python", "-m", "payment_svc"]

FROM runtime AS order-service
COPY order_svc/ order_svc/
RUN python -m compileall -q --invalidation-mode unchecked-hash order_svc
USER 10001:10001
EXPOSE 50053 9103
ENTRYPOINT ["python", "-m", "order_svc"]

# `python -m gateway` runs granian's master in that process: it is PID 1 and
# gets SIGTERM (graceful worker shutdown).
FROM runtime AS api-gateway
ENV GATEWAY_PORT=8080
COPY gateway/ gateway/
RUN python -m compileall -q --invalidation-mode unchecked-hash gateway
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python", "-m", "gateway"]
