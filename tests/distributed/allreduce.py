"""A small all-reduce over TCP, no torch: each rank sends its array to rank 0 at MASTER_ADDR:MASTER_PORT, rank 0 adds
them up and sends the sum back to every rank. What a distributed job's ranks are told is all it uses."""

import json
import os
import socket
import sys
import time
from pathlib import Path

from jupyter_launch import control

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
mine = [rank + 1, 10 * (rank + 1), 100 * (rank + 1)]


def send(sock: socket.socket, message: object) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


if rank == 0:
    server = socket.create_server(("", port), backlog=world)
    total = list(mine)
    peers = []
    for _ in range(world - 1):
        conn, _ = server.accept()
        got = json.loads(conn.makefile("r").readline())
        total = [a + b for a, b in zip(total, got["data"])]
        peers.append(conn)
    for conn in peers:
        send(conn, total)
    result = total
else:
    deadline = time.monotonic() + 60
    while True:
        try:
            sock = socket.create_connection((addr, port), timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    send(sock, {"rank": rank, "data": mine})
    result = json.loads(sock.makefile("r").readline())

print(f"rank {rank} of {world} (local rank {os.environ['LOCAL_RANK']}, host {socket.gethostname()}): sum {result}",
      flush=True)
control.log({"rank": rank, "sum0": result[0]}, step=0)
Path(control.output_dir(), f"rank-{rank}.json").write_text(json.dumps(result))
sys.exit(0)
