"""One picture (`stylize`): its settings, the coarse-to-fine workflow, colour, masks and the memory budget."""
