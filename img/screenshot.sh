#!/usr/bin/env bash
# Makes img/screenshot.png from a real session: a server and three clients in
# tmux panes, typing real messages, captured with their colours and rendered
# to PNG by render.py (Pillow, installed in a throwaway virtualenv).
# Usage: bash img/screenshot.sh   (needs tmux and python3)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
venv=${TMPDIR:-/tmp}/chat-screenshot-venv
[ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet pillow; }

port=${PORT:-18080}
session=chat-shot
tmux kill-session -t "$session" 2>/dev/null || true
tmux new-session -d -s "$session" -x 92 -y 14 -n chat
tmux set-option -t "$session" status off
tmux set-option -t "$session" remain-on-exit on
trap 'tmux kill-session -t "$session" 2>/dev/null || true' EXIT

# One window per program, so each gets a terminal of its own size.
tmux send-keys -t "$session:chat" "clear; RUST_LOG=info target/release/server --port $port" Enter
for name in alice bob carol; do
  tmux new-window -d -t "$session" -n "$name"
done

wait_for() { # window, text: wait until the window shows the text
  for _ in $(seq 100); do
    tmux capture-pane -p -t "$session:$1" | grep -qF -- "$2" && return 0
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1" >&2
  exit 1
}
say() { # window, line
  tmux send-keys -t "$session:$1" -l -- "$2"
  tmux send-keys -t "$session:$1" Enter
}

wait_for chat "listening on"
for name in alice bob carol; do
  tmux send-keys -t "$session:$name" "clear; target/release/client ws://127.0.0.1:$port/ --name $name" Enter
  wait_for "$name" "* $name joined"
done
say alice "hi all! anyone tried the new rooms?"
wait_for carol "alice: hi all!"
say bob "yes: ws://host:$port/rust is the rust room"
wait_for carol "bob: yes"
say carol "/who"
wait_for carol "* 3 in lobby"
say carol "/nick caro"
wait_for alice "carol is now caro"
say carol "nice, names are unique per room"
wait_for alice "caro: nice"
# A bracketed paste of two lines is one message, shown under one name.
printf 'the rooms: /rust, /ops\nand /lobby for the rest' | tmux load-buffer -
tmux paste-buffer -p -t "$session:alice"
tmux send-keys -t "$session:alice" Enter
wait_for bob "and /lobby"
# A look-alike of a name in the room is taken too.
say bob "/nick ALICE"
wait_for bob "is taken"
wait_for alice "caro: nice"

out=img/panes
mkdir -p "$out"
for window in chat alice bob carol; do
  tmux capture-pane -e -p -t "$session:$window" > "$out/$window.ans"
done
"$venv/bin/python" img/render.py img/screenshot.png \
  "server:$out/chat.ans" "alice:$out/alice.ans" "bob:$out/bob.ans" "carol:$out/carol.ans"
rm -r "$out"
echo "wrote img/screenshot.png"
