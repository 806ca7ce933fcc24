# citytel: one image for every role (migrate, fleet import, ingest, api, simulate).
#
#   docker build -t citytel .
#   docker run --rm -p 8080:8080 -e CITYTEL_DATABASE_URL=... citytel api
#
# A single stage: every dependency ships as a binary wheel for this base image, so there is no
# compiler toolchain to leave behind.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CITYTEL_API_HOST=0.0.0.0 \
    CITYTEL_API_PORT=8080

RUN groupadd --system --gid 10001 citytel \
    && useradd --system --uid 10001 --gid citytel --home-dir /app --no-create-home citytel

WORKDIR /app

COPY pyproject.toml README.md ./
COPY src/ src/
COPY simulators/ simulators/
COPY migrations/ migrations/
# The wheel carries the migrations; the demo fleet is read from sensors/ relative to /app.
RUN pip install . && rm -rf src simulators build

COPY sensors/ sensors/
COPY deploy/ deploy/

USER citytel

EXPOSE 8080

# Only meaningful for the `api` role; compose turns it off for the others.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

ENTRYPOINT ["citytel"]
CMD ["api"]
