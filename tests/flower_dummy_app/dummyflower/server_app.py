"""ServerApp: wait for the nodes, send each one array per round, check the replies, write JSON."""

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    result_path = Path(str(cfg["result-path"]))
    want, timeout = int(cfg["num-nodes"]), float(cfg["node-timeout"])

    deadline = time.monotonic() + timeout
    node_ids = sorted(grid.get_node_ids())
    while len(node_ids) < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(node_ids)} of {want} nodes after {timeout} s")
        time.sleep(0.5)
        node_ids = sorted(grid.get_node_ids())

    base = np.arange(int(cfg["array-size"]), dtype=np.float32)
    rounds, errors = [], []
    for rnd in range(int(cfg["rounds"])):
        sent = base + rnd
        messages = [
            Message(RecordDict({"arrays": ArrayRecord([sent])}), dst_node_id=n, message_type=MessageType.TRAIN)
            for n in node_ids
        ]
        replies = {}
        for reply in grid.send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                errors.append(f"round {rnd} node {node}: {reply.error.reason}")
                continue
            (array,) = reply.content["arrays"].to_numpy_ndarrays()
            metrics = reply.content["metrics"]
            replies[str(node)] = {
                "partition-id": int(metrics["partition-id"]),
                "num-partitions": int(metrics["num-partitions"]),
                "pid": int(metrics["pid"]),
                "ppid": int(metrics["ppid"]),
                "plus-one": bool(np.array_equal(array, sent + 1)),
            }
        if len(replies) != len(node_ids):
            errors.append(f"round {rnd}: {len(replies)} replies from {len(node_ids)} nodes")
        rounds.append(replies)

    result = {"node-ids": node_ids, "rounds": rounds, "errors": errors}
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=2))
    if errors:
        raise RuntimeError("; ".join(errors))
