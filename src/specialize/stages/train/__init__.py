"""The train stage: the recipe (losses, trainer), its data, the publish gate and the model card."""
