"""Plots p99 latency against delivered messages per second, one line per
server, from compare.sh's results (lines of: server clients rate json)."""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

results, out = sys.argv[1], sys.argv[2]
series = {}
for line in open(results):
    server, clients, rate, raw = line.split(" ", 3)
    report = json.loads(raw)
    if not report or clients != "1000":
        continue
    point = (int(rate), report["delivered_per_s"], report["latency_ms"]["p99"], report["lost"])
    series.setdefault(server, []).append(point)

fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
for server, points in sorted(series.items()):
    points.sort()  # by offered rate, so the line follows the load
    label = {"chat": "this server", "naive": "tutorial design (examples/naive_server.rs)"}[server]
    ax.plot([p[1] / 1e6 for p in points], [p[2] for p in points], marker="o", label=label)
    for rate, x, y, lost in points:
        if server == "chat":
            ax.annotate(f"{rate} msg/s", (x / 1e6, y), textcoords="offset points", xytext=(-12, -13), fontsize=7)
    lossy = [p for p in points if p[3]]
    if lossy:
        ax.scatter([p[1] / 1e6 for p in lossy], [p[2] for p in lossy], marker="x", s=60, color="red", zorder=3,
                   label=f"{label.split(' (')[0]}: clients dropped, deliveries lost")
ax.set_yscale("log")
ax.set_xlabel("delivered messages per second (millions), 1,000 clients, 10 senders, 64 B")
ax.set_ylabel("p99 latency (ms, log scale)")
ax.set_title("Broadcast fan-out on one 2-core machine, load generator included")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(out)
