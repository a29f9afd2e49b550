"""zipvl-batch: annotate image and video datasets with LVLMs on Ray."""
