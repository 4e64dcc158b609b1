"""The farm's Ray actors and where they are placed: workers, the proposer, the controller."""
