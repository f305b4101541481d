"""The platform side: the Flower ServerApp, the aggregation round driver, checkpoints and export."""
