"""The control loop: the controller and the parts it steps (intake, judge, metrics)."""
