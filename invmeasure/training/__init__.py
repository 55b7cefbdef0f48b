"""invmeasure.training: optimisation loops, their state and their metric output."""
