"""flowerbench: fedcifar's benchmark workload as a Flower app (Flower's PyTorch quickstart layout)."""
