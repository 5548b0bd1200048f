# sandgate: one image for the webhook, extender, agent and certificate job (the subcommand picks).
# Runs as a fixed non-root UID with nothing to write outside /tmp, so it works with
# runAsNonRoot, readOnlyRootFilesystem and all capabilities dropped.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
# Every dependency at the exact version and file hash of requirements.lock (pip-compile
# --generate-hashes from pyproject.toml): a changed or substituted package fails the build.
RUN pip install --no-cache-dir --prefix=/install --require-hashes -r requirements.lock
COPY sandgate ./sandgate
COPY webhooks ./webhooks
COPY scheduler_ext ./scheduler_ext
COPY node_agent ./node_agent
COPY certs ./certs
RUN pip install --no-cache-dir --prefix=/install --no-deps .

FROM python:3.11-slim
COPY --from=build /install /usr/local
# No .pyc writes on a read-only root; unbuffered so every JSON log line reaches the runtime at once.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The same UID:GID as the manifests' runAsUser/runAsGroup (65532, "nonroot" in distroless images).
RUN groupadd --system --gid 65532 sandgate \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin sandgate
USER 65532:65532
ENTRYPOINT ["sandgate"]
CMD ["--help"]
