"""neptune_rt."""
