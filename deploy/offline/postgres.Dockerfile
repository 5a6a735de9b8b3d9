# A stand-in for the official postgres:16 image, built from Debian's PostgreSQL 15 on the stand-in Debian base
# (deploy/offline_images.sh), for machines that cannot pull from Docker Hub. Not for production.
FROM python:3.11-slim
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/*
COPY postgres-entrypoint.sh /entrypoint.sh
ENTRYPOINT ["/entrypoint.sh"]
