"""The files a run reads and writes: images, atomic writes, manifests and checkpoints, the weights."""
