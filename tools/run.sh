#!/bin/sh
# tools/run.sh BINARY: `make run` -- a private redis-server on loopback and
# capgate with the example config, in the foreground (Ctrl-C stops both).
set -eu
bin=$1
dir=build/run
mkdir -p "$dir"
# A free loopback port for the private Redis, unless REDIS_PORT says which.
redis_port=${REDIS_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
key="$dir/user.key"
if [ ! -s "$key" ]; then
    # A development key: 32 random bytes.  Production keys live in /etc/capgate.
    head -c 32 /dev/urandom > "$key"
    chmod 600 "$key"
    echo "run: created development key file $key"
fi
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no --dir "$dir" --logfile "$PWD/$dir/redis.log" &
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null; wait $redis_pid 2>/dev/null' EXIT INT TERM
sed -e "s#redis://127.0.0.1:6379/0#redis://127.0.0.1:$redis_port/0#" \
    -e "s#/etc/capgate/user.key#$PWD/$key#" conf/capgate.yaml > "$dir/capgate.yaml"
listen=$(sed -n 's/^listen: *"\{0,1\}\([^"]*\)"\{0,1\}.*/\1/p' "$dir/capgate.yaml")
cat <<MSG

capgate is starting on http://$listen  (Redis on 127.0.0.1:$redis_port, config $dir/capgate.yaml)
try:
  curl -s http://$listen/v1/decide -d '{"user":"alice@example.com","channel":"email","message_id":"m-1","campaign":"welcome"}'
  curl -s http://$listen/status
Ctrl-C stops capgate and its Redis.

MSG
"$bin" -c "$dir/capgate.yaml"
