"""Report stage: the paper's tables and figures from a run's own outputs, and the static neuron browser."""
