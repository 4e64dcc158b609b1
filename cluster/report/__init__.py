"""What a run looks like from outside: results, cost, plots, the status dictionary."""
