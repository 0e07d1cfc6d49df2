#!/bin/sh
# Entrypoint of the local rabbitmq:3-management stand-in (deploy/compose/build-local-images.sh).
# Started as root: makes the data directory the rabbitmq user's, then runs the command as
# that user (exec, so the server is PID 1's direct replacement and gets SIGTERM).
set -eu
if [ "$(id -u)" = 0 ]; then
    mkdir -p /var/lib/rabbitmq /var/log/rabbitmq
    chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /var/log/rabbitmq
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$0" "$@"
fi
# The Erlang cookie is created by the server on first start; CLI tools run as root in
# health checks find it through HOME=/var/lib/rabbitmq.
exec "$@"
