"""Workers: run one candidate's training at a time, in a private directory, and report the result."""
