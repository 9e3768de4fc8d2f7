#!/usr/bin/env python3
"""Runs the cases of make_hostile.py and sorts each outcome by the README's error contract.

    python3 tests/hostile/run_hostile.py WORKDIR [--limit-gib 4] [--timeout 90] [--only KIND] [--jobs 1]

A case is a *clean refusal* when it exits 1 with exactly one `error: ` line on stderr that names one of the case's files,
nothing new or changed is left in its folder, and no gadget ran; *accepted* when it exits 0; anything else *broke the
contract*: another exit code, an `internal error`, several error lines, a message naming no file, a leftover file, a
process past --limit-gib of resident memory (killed), or past --timeout seconds (killed). Writes WORKDIR/results.jsonl
and prints the table of issue #13.
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("work")
ap.add_argument("--limit-gib", type=float, default=4.0)
ap.add_argument("--timeout", type=float, default=90.0)
ap.add_argument("--only", default=None)
ap.add_argument("--ids", default=None, help="comma-separated case ids")
ap.add_argument("--out", default="results.jsonl")
ap.add_argument("--diffseg", default=None, help="run this diffseg instead of the one the cases were made with")
args = ap.parse_args()

ORDER = [".pt checkpoint (convert)", "flags.json", ".npy (x, t, image, noise, mask)", "model .safetensors",
         "ensemble .safetensors", "experiment JSON", "images and PNG masks", "train-ddpm", "loss", "sample", "synthesize", "export"]


def snapshot(root):
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, n)
            try:
                st = os.lstat(p)
                files[p] = (st.st_size, st.st_mtime_ns)
            except OSError:
                pass
        for d in dirnames:
            files[os.path.join(dirpath, d) + "/"] = (0, 0)
    return files


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def run_case(c):
    before = snapshot(c["cwd"])
    pwned = os.path.join(c["cwd"], "PWND")
    env = dict(os.environ, DOTNET_gcServer="0")
    t0 = time.time()
    cmd = [args.diffseg or c["cmd"][0]] + c["cmd"][1:]
    p = subprocess.Popen(cmd, cwd=c["cwd"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peak, killed = 0, None
    import threading
    out = {}

    def pump(name, stream):
        out[name] = stream.read()
    threads = [threading.Thread(target=pump, args=(n, s)) for n, s in (("out", p.stdout), ("err", p.stderr))]
    for t in threads:
        t.start()
    while p.poll() is None:
        peak = max(peak, rss_kib(p.pid))
        if peak > args.limit_gib * 1024 * 1024:
            killed = f"memory past {args.limit_gib} GiB"
            p.kill()
        elif time.time() - t0 > args.timeout:
            killed = f"hang past {args.timeout:.0f} s"
            p.kill()
        time.sleep(0.02)
    for t in threads:
        t.join()
    seconds = time.time() - t0
    err = out["err"].decode("utf-8", "replace")
    after = snapshot(c["cwd"])
    changed = sorted(p for p, v in after.items() if before.get(p) != v and not p.endswith("/PWND"))
    lines = [l for l in err.splitlines() if l.strip()]
    error_lines = [l for l in lines if l.startswith("error: ") or l.startswith("internal error")]
    verdict, why = None, ""
    if os.path.exists(pwned):
        verdict, why = "broke", "pickle code ran"
    elif killed:
        verdict, why = "broke", killed
    elif p.returncode == 0:
        verdict = "accepted"
    elif p.returncode != 1:
        verdict, why = "broke", f"exit {p.returncode}: {(error_lines or lines or [''])[-1][:160]}"
    elif len(error_lines) != 1 or not lines[-1].startswith("error: "):
        verdict, why = "broke", f"{len(error_lines)} error lines: {' | '.join(error_lines)[:200] or lines[-1:]}"
    elif c["names"] and not any(n in error_lines[0] for n in c["names"]):
        verdict, why = "broke", f"names no file: {error_lines[0][:200]}"
    elif changed:
        verdict, why = "broke", "left behind: " + ", ".join(os.path.relpath(x, c["cwd"]) for x in changed[:4])
    else:
        verdict, why = "refused", error_lines[0][:200]
    if p.returncode == 0:
        why = (lines[-1] if lines else "")[:160]
    return {"id": c["id"], "kind": c["kind"], "note": c["note"], "verdict": verdict, "why": why, "exit": p.returncode,
            "seconds": round(seconds, 2), "peak_gib": round(peak / 1024 / 1024, 2)}


cases = [json.loads(l) for l in open(os.path.join(args.work, "cases.jsonl"))]
if args.only:
    cases = [c for c in cases if c["kind"] == args.only]
if args.ids:
    want = {int(i) for i in args.ids.split(",")}
    cases = [c for c in cases if c["id"] in want]
results = []
with open(os.path.join(args.work, args.out), "w") as log:
    for i, c in enumerate(cases):
        r = run_case(c)
        results.append(r)
        log.write(json.dumps(r) + "\n")
        log.flush()
        if r["verdict"] == "broke":
            print(f"[{i + 1}/{len(cases)}] #{c['id']} {c['kind']} / {c['note']}: {r['why']}", flush=True)

table = collections.OrderedDict((k, collections.Counter()) for k in ORDER)
for r in results:
    table.setdefault(r["kind"], collections.Counter())[r["verdict"]] += 1
print("\n| input | tried | clean refusal | accepted | broke the contract |\n|---|---|---|---|---|")
tot = collections.Counter()
for k, c in table.items():
    n = sum(c.values())
    if n:
        print(f"| {k} | {n} | {c['refused']} | {c['accepted']} | {c['broke']} |")
        tot.update(c)
print(f"| all | {sum(tot.values())} | {tot['refused']} | {tot['accepted']} | {tot['broke']} |")
print(f"peak resident memory {max((r['peak_gib'] for r in results), default=0):.2f} GiB; slowest case "
      f"{max((r['seconds'] for r in results), default=0):.1f} s")
