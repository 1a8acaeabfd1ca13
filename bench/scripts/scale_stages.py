#!/usr/bin/env python3
"""Splits each single-route change of an `operator_bench.py --scale` run into its stages, from
the run's JSON (`change_timeline`, wall-clock send times) and the processes' logs.

    WEIR_BENCH_OPERATOR_LOG='info,kube=warn,weir_operator::controller::watch=debug,weir_operator::push=debug' \\
    BENCH_KEEP_TMP=1 python3 bench/scripts/operator_bench.py --scale --bins DIR --out run.json
    python3 bench/scripts/scale_stages.py run.json LOGDIR     # LOGDIR: .../operator-scale

Per change, seconds after the bench sent its PATCH (all on one clock: the processes log UTC):
  api       the API server answered the PATCH
  event     the operator's ProxyRoute watch delivered it (`input event`, debug)
  compiled  the operator finished compiling (`compiled snapshot`; its compile_ms)
  round     the pusher started the round of that version (`push round`, debug; `verify`: it
            also polls every pod's GET /backends in that round)
  pod1/podN the first and last pod acknowledged (`pushed snapshot`)
  dp1/dpN   the first and last pod applied it (`config applied`; dp_ms: their compile_ms p50)
  seen1/seenN  the bench saw the first and the last pod serve it
Then the medians over the changes.
"""

import json
import re
import statistics
import sys
from datetime import datetime
from pathlib import Path

LINE = re.compile(r"^(\d{4}-\d\d-\d\dT[0-9:.]+Z)\s+(\w+)\s+(.*)$")


def ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def events(path: Path, needles: tuple[str, ...]):
    """(unix time, message line) of each line containing one of `needles`."""
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            if not any(n in line for n in needles):
                continue
            m = LINE.match(line.strip())
            if m:
                out.append((ts(m.group(1)), m.group(3)))
    return out


def field(msg: str, name: str) -> str | None:
    # The event's own field (the last one: a span may carry the same name before it).
    m = re.findall(rf"\b{name}=\"?([\w:.-]+)", msg)
    return m[-1] if m else None


def main() -> int:
    run = json.loads(Path(sys.argv[1]).read_text())
    res = run.get("operator-scale", run)
    d = Path(sys.argv[2])
    op = events(d / "operator.log", ("input event", "compiled snapshot", "push round",
                                     "pushed snapshot", "wrote last-known-good", "status updated"))
    dps = [events(f, ("config applied",)) for f in sorted(d.glob("dataplane-*.log"))]
    rows = []
    tl = res["change_timeline"]
    for n, c in enumerate(tl):
        t0 = c["sent_unix"]
        t_end = tl[n + 1]["sent_unix"] if n + 1 < len(tl) else float("inf")
        win = [(t - t0, m) for t, m in op if t0 <= t < t_end]
        ev = next((t for t, m in win if "input event" in m and "proxyroutes" in m), None)
        comp = next(((t, m) for t, m in win if "compiled snapshot" in m), None)
        if not comp:
            rows.append({"change": n + 1, "missing": "no compile"})
            continue
        version = field(comp[1], "version")
        rnd = next(((t, m) for t, m in win if "push round" in m and field(m, "version") == version
                    and t >= comp[0]), None)
        pushed = [t for t, m in win if "pushed snapshot" in m and field(m, "version") == version]
        applied = []
        dp_ms = []
        for evs in dps:
            for t, m in evs:
                if t0 <= t < t_end and field(m, "version") == version:
                    applied.append(t - t0)
                    dp_ms.append(float(field(m, "compile_ms") or "nan"))
                    break
        statuses = sum(1 for _, m in win if "status updated" in m)
        rows.append({
            "change": n + 1,
            "api": c["patch_answered_s"],
            "event": ev,
            "compiled": comp[0],
            "compile_ms": float(field(comp[1], "compile_ms") or "nan"),
            "round": rnd[0] if rnd else None,
            "verify": (field(rnd[1], "verify") if rnd else None),
            "delta_ms": float(field(rnd[1], "delta_ms") or "nan") if rnd else None,
            "pod1": min(pushed) if pushed else None,
            "podN": max(pushed) if pushed else None,
            "dp1": min(applied) if applied else None,
            "dpN": max(applied) if applied else None,
            "dp_ms": statistics.median(dp_ms) if dp_ms else None,
            "seen1": c["pods_s"][0] if c["pods_s"] else None,
            "seenN": c["pods_s"][-1] if c["pods_s"] else None,
            "statuses": statuses,
        })
    cols = ["change", "api", "event", "compiled", "compile_ms", "round", "verify", "delta_ms",
            "pod1", "podN", "dp1", "dpN", "dp_ms", "seen1", "seenN", "statuses"]
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
    print(" ".join(f"{c:>10}" for c in cols))
    for r in rows:
        print(" ".join(f"{fmt(r.get(c)):>10}" for c in cols))
    med = {}
    for c in cols[1:]:
        xs = [r[c] for r in rows if isinstance(r.get(c), (int, float)) and c != "verify"]
        med[c] = statistics.median(xs) if xs else None
    print(" ".join(f"{'median' if c == 'change' else fmt(med.get(c)):>10}" for c in cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
