"""flowerbench: the ClientApp, as in Flower's PyTorch quickstart."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flowerbench.task import Net, load_data
from flowerbench.task import train as train_fn

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the model on local data."""
    config = msg.content["config"]
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")

    # The benchmark's schedule names the client this node trains in this round, so every
    # implementation trains the same clients (see server_app.py).
    per_round = int(config["clients-per-round"])
    slot = (int(config["server-round"]) - 1) * per_round + int(context.node_config["partition-id"])
    trainloader = load_data(int(config["schedule"][slot]), config)

    epochs, lr, max_steps = int(config["local-epochs"]), float(config["lr"]), int(config["local-steps"])
    train_loss, images = train_fn(model, trainloader, epochs, lr, device, max_steps)

    model_record = ArrayRecord(model.state_dict())
    metrics = {"train_loss": train_loss, "train_images": images, "num-examples": len(trainloader.dataset)}
    content = RecordDict({"arrays": model_record, "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
