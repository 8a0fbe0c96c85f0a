"""dummyflower: a Flower app that only checks the plumbing of a deployment."""
