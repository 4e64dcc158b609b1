"""Control plane of autoresearch-farm: controller loop, judge, store, CLI and Ray glue."""
