#!/usr/bin/env python3
# Shares of a folded profile (inferno-collapse-perf output) by the crate of the deepest Rust
# frame, with the part of each spent in the kernel or libc below it, and the top leaf functions.
# Used by bench/profile.sh.
import sys, collections, re
f = sys.argv[1]
tot=0; by=collections.Counter(); native=collections.Counter(); fn=collections.Counter()
def crate(fr):
    s = fr.lstrip("<&*").replace("mut ","").replace("dyn ","")
    return s.split("::")[0].split(" as ")[0].split("<")[0]
for line in open(f):
    stack, n = line.rsplit(" ", 1); n=int(n); tot+=n
    frames = stack.split(";")
    rust = [fr for fr in frames if "::" in fr]
    leaf_is_rust = "::" in frames[-1]
    c = crate(rust[-1]) if rust else "(no rust frame)"
    grp = {"tokio_postgres":"postgres client","postgres_protocol":"postgres client","postgres_types":"postgres client",
           "lapin":"lapin (AMQP)","amq_protocol":"lapin (AMQP)","amq_protocol_types":"lapin (AMQP)","amq_protocol_codegen":"lapin (AMQP)",
           "tracing":"tracing","tracing_core":"tracing","tracing_subscriber":"tracing","tracing_opentelemetry":"tracing","opentelemetry":"tracing","opentelemetry_sdk":"tracing",
           "hyper":"hyper/axum/tower","axum":"hyper/axum/tower","tower":"hyper/axum/tower","hyper_util":"hyper/axum/tower","h2":"hyper/axum/tower",
           "tokio":"tokio runtime","tokio_util":"tokio runtime","mio":"tokio runtime","std":"std","core":"core/alloc","alloc":"core/alloc",
           "serde_json":"serde_json","serde":"serde_json","deadpool":"deadpool","deadpool_postgres":"deadpool","flume":"flume (lapin's channels)"}.get(c, c)
    kind = "own code" if leaf_is_rust else "kernel/libc (syscalls, malloc, scheduling)"
    by[grp]+=n
    if not leaf_is_rust: native[grp]+=n
    fn[frames[-1] if leaf_is_rust else "[native] "+frames[-1]] += n
print(f, "samples", tot)
nat=sum(native.values())
print(f"  leaf outside Rust (kernel, libc): {100*nat/tot:.1f}%")
for k,v in by.most_common(16):
    print(f"  {100*v/tot:5.1f}%  {k:28s} (of which kernel/libc under it {100*native[k]/tot:.1f}%)")
print("  top leaf functions:")
for k,v in fn.most_common(12): print(f"    {100*v/tot:5.1f}%  {k[:110]}")
# Who the socket writes (send/writev: on loopback they carry the receiver's TCP work too) go to.
peers=collections.Counter()
for line in open(f):
    stack, n = line.rsplit(" ", 1); n=int(n)
    frames = stack.split(";")
    if not any("TcpStream as std::io::Write>::write" in x for x in frames): continue
    who = "other"
    for x in frames:
        if "tokio_postgres" in x: who = "PostgreSQL (tokio-postgres)"; break
        if "lapin" in x or "amq_protocol" in x: who = "RabbitMQ (lapin)"; break
        if "hyper" in x: who = "HTTP answers (hyper)"; break
    peers[who] += n
print("  socket writes, by peer:")
for k,v in peers.most_common(): print(f"    {100*v/tot:5.1f}%  {k}")
