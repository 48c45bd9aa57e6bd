# erp-sync: one image for every process (beat, workers, flower, the management command).
# No secrets in the image: the Redis and database URLs and Flower credentials come from the
# environment at run time. The migrations (erp_sync/db/migrations) are package data of erp_sync.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 erpsync \
    && useradd --system --uid 10001 --gid erpsync --home-dir /app --shell /usr/sbin/nologin erpsync

WORKDIR /app

# The package metadata first, then the modules listed in pyproject.toml (py-modules and packages).
COPY pyproject.toml README.md constraints.txt ./
COPY worker.py beat_schedule.py manage.py ./
COPY config/ config/
COPY tasks/ tasks/
COPY erp_sync/ erp_sync/

# The lock file's versions (scripts/lock.sh), as scripts/setup.sh and CI install them.
RUN pip install -c constraints.txt . \
    && rm -rf build *.egg-info

USER erpsync

# `celery -A worker ...` imports worker.py from this directory; `erp-sync` is the console script.
CMD ["erp-sync", "--help"]
