#!/bin/sh
# Runs the README's example program as two processes and checks its answer.
set -eu
bin=$1
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 29517)
url=tcp://127.0.0.1:$port
"$bin" 1 "$url" & pid=$!
out=$(timeout 30 "$bin" 0 "$url")
wait $pid
echo "$out"
[ "$out" = "w1 says 42" ]
