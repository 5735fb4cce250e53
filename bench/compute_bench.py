"""Benchmark of the HTTP+JSON compute road, with its references in the same run.

1. Requests per second for a trivial job (``POST /jobs`` calling a function that returns
   ``ok``) beside a plain MochiWeb handler returning a constant, served by the same node,
   loaded by the same generator (keep-alive connections, fixed concurrency, fixed time).
2. Per-item overhead of the distributed map beside ``lists:map`` (timed inside Erlang).
3. Speedup of a CPU-bound map on 1 and 2 worker nodes (timed inside Erlang).
4. A slow node: a map over two worker nodes (one process each) where one node is 5x
   slower per item, with the default chunking beside the ideal (both nodes busy to the end,
   from their measured per-item times) and chunk 1; and the old default (fixed chunks of
   items / (4 x slots), no speculative re-run) for comparison.
5. Setup cost of a one-item job over two worker nodes (code check cached per connection)
   beside a bare remote spawn round trip and a local one-process job.

Sections 4 and 5 run in an erl of their own with two peer nodes (no compute service), on
the system runtime.

Run: ``.venv/bin/python bench/compute_bench.py [--seconds 3] [--concurrency 8]``.
Everything it starts is on loopback and stopped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable

from beambridge import otp
from beambridge.compute import Client, Service

TRIVIAL = json.dumps({"op": "call", "fun": "bbc_sample_jobs:nothing", "args": []}).encode()


def load(url: str, method: str, path: str, body: bytes | None, concurrency: int, seconds: float) -> float:
    """Requests/s from `concurrency` threads, each on one keep-alive connection."""
    parts = urllib.parse.urlsplit(url)
    counts = [0] * concurrency
    stop = time.monotonic() + seconds
    headers = {"Content-Type": "application/json"} if body else {}

    def worker(slot: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
        while time.monotonic() < stop:
            conn.request(method, path, body=body, headers=headers)
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 200, answer.status
            counts[slot] += 1
        conn.close()

    return _run_threads(worker, concurrency, counts, seconds)


def load_client(url: str, concurrency: int, seconds: float) -> float:
    """Requests/s through beambridge.compute.Client (one shared, thread-safe client)."""
    client = Client(url)
    counts = [0] * concurrency
    stop = time.monotonic() + seconds

    def worker(slot: int) -> None:
        while time.monotonic() < stop:
            client.call("bbc_sample_jobs:nothing")
            counts[slot] += 1

    rate = _run_threads(worker, concurrency, counts, seconds)
    client.close()
    return rate


def _run_threads(worker: Callable[[int], None], concurrency: int, counts: list[int], seconds: float) -> float:
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    return sum(counts) / (time.monotonic() - started)


SLOW_NODE_BENCH = r"""
-module(bbc_slow_node_bench).
-export([main/1, item/3]).

%% Ms per item, five times that on the slow node.
item(Slow, Ms, X) ->
    case node() of
        Slow -> timer:sleep(5 * Ms);
        _ -> timer:sleep(Ms)
    end,
    X.

peer(I) ->
    Name = list_to_atom("bbcslow" ++ integer_to_list(I) ++ "_" ++ os:getpid()),
    {ok, Pid, Node} = peer:start(#{name => Name, host => "127.0.0.1", longnames => true,
                                   exec => filename:join([code:root_dir(), "bin", "erl"]),
                                   connection => standard_io,
                                   args => ["-setcookie", atom_to_list(erlang:get_cookie()),
                                            "-connect_all", "false",
                                            "-kernel", "inet_dist_use_interface", "{127,0,0,1}"]}),
    true = net_kernel:connect_node(Node),
    {Pid, Node}.

micros(F) -> {T, _} = timer:tc(F), T.

best(K, F) -> lists:min([micros(F) || _ <- lists:seq(1, K)]).

main([ItemsArg, MsArg]) ->
    N = list_to_integer(ItemsArg),
    Ms = list_to_integer(MsArg),
    [{P1, Slow}, {P2, Fast}] = [peer(1), peer(2)],
    Nodes = {nodes, [{Slow, 1}, {Fast, 1}]},
    List = lists:seq(1, N),
    F = fun(X) -> ?MODULE:item(Slow, Ms, X) end,
    List = bbc_plists:map(F, List, Nodes),                       % warm-up, code pushed
    PerItem = fun(Node) ->
                      K = 40,
                      micros(fun() -> bbc_plists:map(F, lists:seq(1, K),
                                                     [K, {nodes, [{Node, 1}]}]) end) / K
              end,
    TS = PerItem(Slow),
    TF = PerItem(Fast),
    Run = fun(Malt) -> micros(fun() -> List = bbc_plists:map(F, List, Malt) end) end,
    Old = ceil(N / 8),
    Rows = [{ideal, N / (1 / TS + 1 / TF)},
            {default, Run(Nodes)},
            {chunk_1, Run([Nodes, 1])},
            {old_default, Run([Nodes, Old, {speculate, false}])},
            {default_no_speculation, Run([Nodes, {speculate, false}])}],
    Id = fun(X) -> X end,
    Two = {nodes, [Slow, Fast]},
    [1] = bbc_plists:map(Id, [1], Two),
    Reps = 500,
    Per = fun(G) -> best(3, fun() -> [G() || _ <- lists:seq(1, Reps)] end) / Reps end,
    Spawn = fun() ->
                    {_, R} = spawn_monitor(Fast, erlang, exit, [done]),
                    receive {'DOWN', R, _, _, _} -> ok end
            end,
    Setup = [{raw_remote_spawn, Per(Spawn)},
             {one_item_two_nodes, Per(fun() -> bbc_plists:map(Id, [1], Two) end)},
             {one_item_local, Per(fun() -> bbc_plists:map(Id, [1], {processes, 1}) end)}],
    [io:format("bench ~s ~p ~s ~.3f~n", [Sec, N, K, float(V)])
     || {Sec, Vs} <- [{slow, Rows}, {setup, Setup}], {K, V} <- Vs],
    io:format("bench per_item slow ~.1f fast ~.1f old_chunk ~p~n", [TS, TF, Old]),
    peer:stop(P1),
    peer:stop(P2).
"""


def slow_node_bench(items: int, ms: int) -> dict[str, dict[str, float]]:
    """Sections 4 and 5: an erl of its own with two peers; microseconds per row."""
    runtime = otp.default_runtime()
    plists = otp.build_erlang_app("bbc_plists")
    with tempfile.TemporaryDirectory(prefix="bbcbench") as tmp:
        source = os.path.join(tmp, "bbc_slow_node_bench.erl")
        with open(source, "w") as handle:
            handle.write(SLOW_NODE_BENCH)
        subprocess.run([str(otp.erlc()), "-o", tmp, source], check=True, capture_output=True,
                       timeout=120)
        name = f"bbcslowbench_{secrets.token_hex(3)}_{os.getpid()}@127.0.0.1"
        env = runtime.environ()
        env.setdefault("ERL_EPMD_ADDRESS", "127.0.0.1")
        command = [str(runtime.erl), "-noshell", "-name", name, "-setcookie", secrets.token_hex(8),
                   "-connect_all", "false", "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
                   "-pa", tmp, "-pa", str(plists), "-eval",
                   f'bbc_slow_node_bench:main(["{items}", "{ms}"]), halt().']
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env,
                              cwd=tmp)
    rows: dict[str, dict[str, float]] = {"slow": {}, "setup": {}, "per_item": {}}
    for line in done.stdout.splitlines():
        parts = line.split()
        if parts[:1] != ["bench"]:
            continue
        if parts[1] == "per_item":
            rows["per_item"] = {"slow": float(parts[3]), "fast": float(parts[5]),
                                "old_chunk": float(parts[7])}
        else:
            rows[parts[1]][parts[3]] = float(parts[4])
    if done.returncode != 0 or not rows["slow"]:
        raise RuntimeError(f"slow-node bench failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return rows


def print_slow_node(rows: dict[str, dict[str, float]], items: int, ms: int) -> None:
    slow, per = rows["slow"], rows["per_item"]
    ideal = slow["ideal"]
    print(f"\n4. a slow node: {items} items over 2 worker nodes x 1 process, {ms} ms per item, "
          f"{5 * ms} ms on the slow one\n   (measured per item: {per['fast'] / 1000:.1f} ms and "
          f"{per['slow'] / 1000:.1f} ms; best of 1)")
    print(f"   {'what':<52}{'seconds':>10}{'x ideal':>9}")
    labels = {"ideal": "ideal: both nodes busy to the end (reference)",
              "chunk_1": "chunk 1 (reference)",
              "default": "default chunking (sized as it goes, speculation)",
              "default_no_speculation": "default chunking, {speculate, false}",
              "old_default": f"old default: fixed chunks of {per['old_chunk']:.0f}, no speculation"}
    for key, label in labels.items():
        if key in slow:
            print(f"   {label:<52}{slow[key] / 1e6:>10.2f}{slow[key] / ideal:>9.2f}")
    print(f"   default / chunk 1: {slow['default'] / slow['chunk_1']:.2f}")
    setup = rows["setup"]
    base = setup["raw_remote_spawn"]
    print("\n5. one-item job, mean of 500 (best of 3), code check cached")
    print(f"   {'what':<52}{'us/job':>10}{'ratio':>9}")
    labels = {"raw_remote_spawn": "bare spawn_monitor round trip to a node (reference)",
              "one_item_two_nodes": "bbc_plists:map of one item over two nodes",
              "one_item_local": "bbc_plists:map of one item, one local process"}
    for key, label in labels.items():
        print(f"   {label:<52}{setup[key]:>10.1f}{setup[key] / base:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each load run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--items", type=int, default=200_000, help="items for the overhead run")
    parser.add_argument("--slow-items", type=int, default=400, help="items for the slow-node run")
    parser.add_argument("--slow-ms", type=int, default=5, help="ms per item on the fast node")
    parser.add_argument("--only-slow-node", action="store_true",
                        help="run sections 4 and 5 only (no compute service)")
    args = parser.parse_args()
    if args.only_slow_node:
        print_slow_node(slow_node_bench(args.slow_items, args.slow_ms), args.slow_items, args.slow_ms)
        return

    config = {"job_modules": ["bbc_sample_jobs", "bbc_bench"], "max_jobs": 1000}
    with Service(local_nodes=2, config=config) as service:
        client = service.client(job_timeout=600)
        const_port = client.call("bbc_bench:start_const")
        const_url = f"http://127.0.0.1:{const_port}"
        load(const_url, "GET", "/", None, args.concurrency, 0.5)  # warm-up
        load(service.url, "POST", "/jobs", TRIVIAL, args.concurrency, 0.5)
        plain = load(const_url, "GET", "/", None, args.concurrency, args.seconds)
        job = load(service.url, "POST", "/jobs", TRIVIAL, args.concurrency, args.seconds)
        via_client = load_client(service.url, args.concurrency, args.seconds)
        overhead = client.call("bbc_bench:overhead", args.items)
        speed = client.call("bbc_bench:speedup", 16, 3_000_000)

    print(f"\n1. requests/s, {args.concurrency} keep-alive connections, {args.seconds:.0f} s each "
          "(load generated by Python threads on the same 2 cores)")
    print(f"   {'what':<52}{'req/s':>10}{'ratio':>9}")
    print(f"   {'plain MochiWeb handler, constant JSON (reference)':<52}{plain:>10,.0f}{1:>9.2f}")
    print(f"   {'POST /jobs trivial call (raw HTTP)':<52}{job:>10,.0f}{job / plain:>9.2f}")
    label = "POST /jobs trivial call via compute.Client"
    print(f"   {label:<52}{via_client:>10,.0f}{via_client / plain:>9.2f}")

    n = overhead["items"]
    micros = overhead["micros"]
    base = micros["lists_map"]
    print(f"\n2. per-item cost of a trivial map over {n:,} items (timed in Erlang, best of 3)")
    print(f"   {'what':<52}{'ns/item':>10}{'ratio':>9}")
    labels = {"lists_map": "lists:map (reference)",
              "plists_local": "bbc_plists:map, local processes, default chunks",
              "plists_local_chunk1000": "bbc_plists:map, local processes, chunk 1000",
              "plists_nodes": f"bbc_plists:map on {overhead['workers']} worker nodes"}
    for key, label in labels.items():
        if key in micros:
            print(f"   {label:<52}{micros[key] * 1000 / n:>10,.1f}{micros[key] / base:>9.2f}")

    micros = speed["micros"]
    base = micros["sequential"]
    print(f"\n3. CPU-bound map: {speed['items']} items x burn({speed['rounds']:,}) "
          "(timed in Erlang, best of 2)")
    print(f"   {'what':<52}{'seconds':>10}{'speedup':>9}")
    labels = {"sequential": "one process on a worker, all items (reference)",
              "one_node_one_process": "1 worker node, 1 process",
              "two_nodes_one_process_each": "2 worker nodes, 1 process each",
              "two_nodes_all_schedulers": "2 worker nodes, 1 process per scheduler"}
    for key, label in labels.items():
        if key in micros:
            print(f"   {label:<52}{micros[key] / 1e6:>10.2f}{base / micros[key]:>9.2f}")
    print("\n   (this machine has 2 cores: 2 nodes x 1 process can at best double one process)")
    print_slow_node(slow_node_bench(args.slow_items, args.slow_ms), args.slow_items, args.slow_ms)


if __name__ == "__main__":
    main()
