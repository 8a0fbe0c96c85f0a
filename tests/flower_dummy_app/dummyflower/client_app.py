"""ClientApp: reply with the array plus one, this node's partition-id and this process's pid."""

import os

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    (array,) = msg.content["arrays"].to_numpy_ndarrays()
    metrics = MetricRecord(
        {
            "partition-id": int(context.node_config["partition-id"]),
            "num-partitions": int(context.node_config["num-partitions"]),
            "pid": os.getpid(),
            "ppid": os.getppid(),
        }
    )
    return Message(RecordDict({"arrays": ArrayRecord([array + 1]), "metrics": metrics}), reply_to=msg)
