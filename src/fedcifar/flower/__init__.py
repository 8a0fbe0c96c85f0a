"""fedcifar on Flower's Deployment Engine: a ClientApp and a ServerApp that only translate."""
