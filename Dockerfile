# lbp-redflags image: docker build -t lbp-redflags:0.1.0 .
# Stage 1 builds wheels (the project and every dependency, PostgreSQL driver and medspaCy included); stage 2
# installs them offline into a slim image that runs as an unprivileged user, with no compiler and no
# spaCy model (notes are read by a blank English pipeline: nothing is downloaded at build or run time);
# the bundled example patients then go through the hooks once, in-process, as a smoke test of the image.
# Configuration comes from LBP_* variables and a TOML file (LBP_CONFIG); see the README. Listening beyond
# loopback needs client authentication configured, so the image refuses to start until it is.

FROM python:3.11-slim AS build
# A C/C++ toolchain for the build stage only: medspaCy's sentence splitter and matchers (PyRuSH, quicksectx,
# pysimstring, medspacy_unqlite) publish x86_64 wheels but none for arm64, where pip builds them from source
# (Cython comes from their own build requirements). medspacy_quickumls is an sdist on every platform (pure
# Python: setuptools builds it in pip's isolated build environment).
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
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
 && rm -rf /wheels \
 && lbp-redflags demo >/dev/null
USER 10001:10001
WORKDIR /home/lbp
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LBP_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["lbp-redflags"]
CMD ["serve"]
