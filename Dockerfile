# lbp-redflags image: docker build -t lbp-redflags:0.1.0 .
# Stage 1 builds wheels (the project and every dependency, PostgreSQL driver included); stage 2 installs
# them offline into a slim image that runs as an unprivileged user. Configuration comes from LBP_*
# variables and a TOML file (LBP_CONFIG); see the README. Listening beyond loopback needs client
# authentication configured, so the image refuses to start until it is.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cds_service ./cds_service
COPY fhir_mappings ./fhir_mappings
COPY cards ./cards
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels "."

FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LBP_HOST=0.0.0.0 \
    LBP_PORT=8080
RUN groupadd --system --gid 10001 lbp \
 && useradd --system --uid 10001 --gid lbp --create-home --home-dir /home/lbp --shell /usr/sbin/nologin lbp
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir --no-index --find-links /wheels lbp-redflags \
 && rm -rf /wheels
USER 10001:10001
WORKDIR /home/lbp
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LBP_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["lbp-redflags"]
CMD ["serve"]
