#!/usr/bin/env python3
"""Server-side latency of one load-test point, from two /metrics snapshots.

    server_latency.py BEFORE AFTER MODEL

BEFORE and AFTER are the text of the server's /metrics page taken just before
and just after a load point. Prints one JSON object with, for the requests
the server answered in between:

  request_p50_ms, request_p99_ms   bitnet_request_duration_seconds (arrival to
                                   response, inside the server)
  queue_p99_ms                     bitnet_queue_duration_seconds
  compute_p99_ms                   bitnet_batch_compute_seconds, per device
  request_over_25ms                fraction of requests slower than 25 ms

The client (bitnet-load) measures the whole round trip; the difference
between its p99 and request_p99_ms is time outside the server's request
handling (gRPC transport, the client's own queueing). Quantiles are
interpolated linearly inside the histogram bucket, as Prometheus's
histogram_quantile does, so they are only as fine as the buckets (.., 10, 25,
50 ms, ..).

Standard library only: it runs on the GPU host.
"""
import json
import re
import sys

SAMPLE = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')


def parse(path):
    """{(name, frozenset(labels)): value} for every sample with labels."""
    samples = {}
    for line in open(path):
        m = SAMPLE.match(line.strip())
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def buckets(before, after, family, match):
    """Sorted [(upper bound, count in the interval)] of one histogram series."""
    out = []
    for (name, labels), value in after.items():
        if name != family + "_bucket" or not match(dict(labels)):
            continue
        le = dict(labels)["le"]
        bound = float("inf") if le == "+Inf" else float(le)
        out.append((bound, value - before.get((name, labels), 0.0)))
    return sorted(out)


def quantile(q, cumulative):
    """histogram_quantile over cumulative [(le, count)], in seconds."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            width = count - lower_count
            share = (rank - lower_count) / width if width > 0 else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def ms(seconds):
    return None if seconds is None else round(seconds * 1000, 3)


def main():
    before, after, model = parse(sys.argv[1]), parse(sys.argv[2]), sys.argv[3]
    of_model = lambda labels: labels.get("model") == model  # noqa: E731
    request = buckets(before, after, "bitnet_request_duration_seconds", of_model)
    queue = buckets(before, after, "bitnet_queue_duration_seconds", of_model)
    result = {
        "request_p50_ms": ms(quantile(0.5, request)),
        "request_p99_ms": ms(quantile(0.99, request)),
        "queue_p99_ms": ms(quantile(0.99, queue)),
        "request_over_25ms": None,
        "compute_p99_ms": {},
    }
    if request and request[-1][1] > 0:
        within = max((c for b, c in request if b <= 0.025), default=0.0)
        result["request_over_25ms"] = round(1 - within / request[-1][1], 5)
    devices = {dict(l).get("device") for (n, l) in after
               if n == "bitnet_batch_compute_seconds_bucket" and of_model(dict(l))}
    for device in sorted(d for d in devices if d):
        series = buckets(before, after, "bitnet_batch_compute_seconds",
                         lambda labels, d=device: of_model(labels) and labels.get("device") == d)
        result["compute_p99_ms"][device] = ms(quantile(0.99, series))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
